//! A PostgreSQL database that exists for one test: created with a random name on the
//! server `CASEWORK_TEST_POSTGRES` names (default
//! `postgres://postgres@127.0.0.1:54329/postgres`, which `bash tests/postgres.sh` starts)
//! and dropped with the value. When the server cannot be reached the test fails, naming
//! that script: it never passes silently.
//!
//! Used by the integration tests (`mod support { pub mod postgres; }`) and, through a
//! `#[path]` module, by the unit tests of `engine/src/store/postgres.rs`; so it uses only
//! the crates both can name.

#![allow(dead_code)] // each test binary uses a different part of it

pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:54329/postgres";

pub struct TestDb {
    admin: String,
    name: String,
    url: String,
    runtime: tokio::runtime::Runtime,
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(CASEWORK_TEST_POSTGRES is not a URL)".to_string(),
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let (client, conn) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        cfg.connect(tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        ),
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl TestDb {
    pub fn new() -> TestDb {
        let admin = std::env::var("CASEWORK_TEST_POSTGRES")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let name = format!("casework_test_{:016x}", rand::random::<u64>());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test database");
        let created = runtime.block_on(async {
            let c = connect(&admin).await?;
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| e.to_string())
        });
        if let Err(e) = created {
            panic!(
                "cannot create a test database on the PostgreSQL server {} ({e}). Start it with `bash tests/postgres.sh`, or point CASEWORK_TEST_POSTGRES at another server",
                shown(&admin)
            );
        }
        let mut u = url::Url::parse(&admin).expect("CASEWORK_TEST_POSTGRES is a URL");
        u.set_path(&format!("/{name}"));
        TestDb {
            admin,
            url: u.to_string(),
            name,
            runtime,
        }
    }

    /// The test database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first column of every row of `sql` on the test database, as bytes (to look at
    /// raw tables).
    pub fn raw_bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        self.runtime.block_on(async {
            let c = connect(&self.url)
                .await
                .expect("connect to the test database");
            c.query(sql, &[])
                .await
                .expect("raw query")
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect()
        })
    }

    /// Run statements on the test database.
    pub fn execute(&self, sql: &str) {
        self.runtime.block_on(async {
            let c = connect(&self.url)
                .await
                .expect("connect to the test database");
            c.batch_execute(sql).await.expect("raw statements");
        })
    }
}

impl Default for TestDb {
    fn default() -> Self {
        TestDb::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (&self.admin, &self.name);
        let _ = self.runtime.block_on(async {
            let c = connect(admin).await?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .map_err(|e| e.to_string())
        });
    }
}
