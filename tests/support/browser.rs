//! A real headless Chromium for tests, driven through chromedriver with the W3C
//! WebDriver protocol (JSON over HTTP on 127.0.0.1): just the commands the console test
//! needs. `bash tests/browser.sh` installs Debian's `chromium` and `chromium-driver`.

#![allow(dead_code)] // each test binary uses a different part of it

use base64::Engine as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
    /// Where screenshots go (kept as test artifacts).
    pub shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub fn start(shots: PathBuf) -> Browser {
        let driver_bin = find_program(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
            .unwrap_or_else(|| {
                panic!("chromedriver is not installed: run `bash tests/browser.sh` (it installs Debian's chromium and chromium-driver)")
            });
        let chromium = find_program(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"])
            .unwrap_or_else(|| panic!("chromium is not installed: run `bash tests/browser.sh`"));
        let port = super::daemon::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = agent
                .get(&format!("{root}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"],
            },
        }}});
        let mut resp = agent
            .post(&format!("{root}/session"))
            .send_json(caps)
            .expect("chromedriver answers");
        let v: Value = resp.body_mut().read_json().expect("a session answer");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no Chromium session: {v}"))
            .to_string();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base: format!("{root}/session/{session}"),
            agent,
            shots,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self.agent.post(&url).send_json(b.unwrap_or(json!({}))),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        assert!(
            status < 400,
            "WebDriver {method} {path} answered {status}: {v}"
        );
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The element a CSS selector picks (the first), or `None`.
    pub fn try_find(&self, css: &str) -> Option<String> {
        let url = format!("{}/element", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .send_json(json!({"using": "css selector", "value": css}))
            .unwrap();
        let ok = resp.status().as_u16() < 400;
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        ok.then(|| v["value"][ELEMENT].as_str().map(str::to_string))
            .flatten()
    }

    pub fn find(&self, css: &str) -> String {
        self.try_find(css).unwrap_or_else(|| {
            panic!(
                "no element `{css}` on {}:\n{}",
                self.url(),
                self.text("body")
            )
        })
    }

    fn script(&self, js: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Clicks a link or a submit button and waits until the next page has loaded. Pages
    /// of running instances reload themselves: when that happens between finding the
    /// element and clicking it (the element is stale, or a link's click ends on the same
    /// page), the click is tried again.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let before = self.url();
            let e = self.find(css);
            // A mark on this page's window: gone once another page has loaded.
            self.script("window.__casework_old_page = true;");
            let mut resp = self
                .agent
                .post(&format!("{}/element/{e}/click", self.base))
                .send_json(json!({}))
                .unwrap();
            if resp.status().as_u16() >= 400 {
                let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
                assert!(
                    v.to_string().contains("stale element"),
                    "clicking `{css}`: {v}"
                );
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let loaded = self.script(
                    "return window.__casework_old_page === undefined && document.readyState === 'complete';",
                );
                if loaded == json!(true) {
                    break;
                }
                assert!(Instant::now() < deadline, "clicking `{css}` loaded no page");
                std::thread::sleep(Duration::from_millis(50));
            }
            let is_link = css.starts_with('a') || css.contains(" a");
            if is_link && self.url() == before {
                continue;
            }
            return;
        }
        panic!("clicking `{css}` kept missing a page that reloads itself");
    }

    /// Clears a field and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.command("POST", &format!("/element/{e}/clear"), None);
        self.command(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Picks the option with `value` in a `<select>`.
    pub fn choose(&self, select_css: &str, value: &str) {
        let e = self.find(&format!("{select_css} option[value='{value}']"));
        self.command("POST", &format!("/element/{e}/click"), None);
    }

    /// The text of the element `css` picks (empty when there is none). Pages of running
    /// instances reload themselves, so an element can go stale between finding and
    /// reading it: then it is found again.
    pub fn text(&self, css: &str) -> String {
        for _ in 0..20 {
            let Some(e) = self.try_find(css) else {
                return String::new();
            };
            let mut resp = self
                .agent
                .get(&format!("{}/element/{e}/text", self.base))
                .call()
                .unwrap();
            let ok = resp.status().as_u16() < 400;
            let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            if ok {
                return v["value"].as_str().unwrap_or("").to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("`{css}` kept going stale on {}", self.url())
    }

    /// Reloads until the text of `css` holds `needle` (pages of running instances reload
    /// themselves too); at most a minute. Answers the whole page's text.
    pub fn wait_for(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.text("body");
            if self.text(css).contains(needle) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "`{needle}` never showed on {}:\n{body}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(250));
            self.command("POST", "/refresh", None);
        }
    }

    /// Saves a PNG of the window as `NAME.png` in the screenshot folder.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}
