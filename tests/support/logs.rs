//! Captures what the code under test logs during one future, with the name of the
//! thread each line was written from.

#![allow(dead_code)] // each test binary uses a different part of it

use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

pub fn capture() -> Capture {
    Capture::default()
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub async fn run<F: std::future::Future>(&self, fut: F) -> F::Output {
        use tracing::instrument::WithSubscriber;
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_thread_names(true)
            .with_ansi(false)
            .finish();
        fut.with_subscriber(subscriber).await
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
