//! Child processes of a test (the portcullis binary, redis-server): output
//! captured, every wait bounded, and killed (and reaped) when dropped, whatever
//! happened, so a failing test never leaves a process behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The binary with a clean environment for what portcullis reads.
pub fn portcullis(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG");
    cmd
}

/// How a process ended, with everything it printed.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A child process of the test; killed (and reaped) when dropped.
pub struct Proc {
    child: Child,
    what: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    /// Where stdout and stderr go instead, for `spawn_logged`.
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc::launch(cmd, None)
            .unwrap_or_else(|e| panic!("{:?} does not start: {e}", cmd.get_program()))
    }

    /// Like `spawn`, with `input` written to stdin and then end of input.
    pub fn spawn_with_input(cmd: &mut Command, input: &str) -> Proc {
        Proc::launch(cmd, Some(input))
            .unwrap_or_else(|e| panic!("{:?} does not start: {e}", cmd.get_program()))
    }

    /// Like `spawn`, returning the error when the program cannot be started.
    pub fn try_spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        Proc::launch(cmd, None)
    }

    /// Starts `cmd` with stdin closed and stdout and stderr both written to
    /// the file `log` (read back with `log_text`).
    pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("{:?} does not start: {e}", cmd.get_program()));
        Proc::new(
            cmd,
            child,
            Arc::default(),
            Arc::default(),
            Vec::new(),
            Some(log.to_path_buf()),
        )
    }

    fn launch(cmd: &mut Command, input: Option<&str>) -> std::io::Result<Proc> {
        let mut child = cmd
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout: Arc<Mutex<Vec<u8>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        let readers = vec![
            pump(child.stdout.take().unwrap(), stdout.clone()),
            pump(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let pipe = child.stdin.take();
        let p = Proc::new(cmd, child, stdout, stderr, readers, None);
        if let (Some(mut pipe), Some(text)) = (pipe, input) {
            pipe.write_all(text.as_bytes()).expect("write stdin");
            // Dropping the pipe closes it: end of input.
        }
        Ok(p)
    }

    fn new(
        cmd: &Command,
        child: Child,
        stdout: Arc<Mutex<Vec<u8>>>,
        stderr: Arc<Mutex<Vec<u8>>>,
        readers: Vec<JoinHandle<()>>,
        log: Option<PathBuf>,
    ) -> Proc {
        let program = Path::new(cmd.get_program());
        let what = if program == Path::new(BIN) {
            "portcullis".to_string()
        } else {
            program.display().to_string()
        };
        Proc {
            child,
            what,
            stdout,
            stderr,
            readers,
            log,
            status: None,
        }
    }

    /// Names the process in panic messages ("portcullis" by default).
    pub fn named(mut self, what: impl Into<String>) -> Proc {
        self.what = what.into();
        self
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Captured stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The log file of `spawn_logged` so far (stdout then stderr otherwise).
    pub fn log_text(&self) -> String {
        match &self.log {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => self.stdout() + &self.stderr(),
        }
    }

    /// What the process printed, for a panic message.
    fn printed(&self) -> String {
        match &self.log {
            Some(_) => self.log_text(),
            None => format!(
                "--- stdout\n{}\n--- stderr\n{}",
                self.stdout(),
                self.stderr()
            ),
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Sends a signal (`"TERM"`, `"HUP"`...) through the `kill` command (libc
    /// is not a dependency).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL now, and reaps the process: its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal("KILL");
        let status = self.child.wait().expect("wait");
        self.status = Some(status);
        self.join_readers();
        status
    }

    /// Waits (blocking) for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                self.join_readers();
                return s;
            }
            if Instant::now() > deadline {
                self.exit_overdue(limit);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like `wait_exit`, without blocking the async runtime.
    pub async fn wait_exit_async(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                self.join_readers();
                return s;
            }
            if Instant::now() > deadline {
                self.exit_overdue(limit);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn exit_overdue(&self, limit: Duration) -> ! {
        panic!(
            "{} did not exit within {limit:?}\n{}",
            self.what,
            self.printed()
        );
    }

    /// Waits (blocking, at most `limit`) for the exit: its code and output.
    pub fn finish(mut self, limit: Duration) -> Output {
        let status = self.wait_exit(limit);
        Output {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Once the process is gone its pipes reach EOF, so the readers end.
    pub fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Waits until `cond(stdout)` holds; panics after `limit` or if the process exits first.
    pub async fn wait_stdout(&mut self, limit: Duration, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(&self.stdout()) {
                return;
            }
            if let Some(s) = self.exited() {
                // One last look: output may have arrived just before the exit.
                self.join_readers();
                if cond(&self.stdout()) {
                    return;
                }
                panic!(
                    "{} exited ({s}) before {what}\n{}",
                    self.what,
                    self.printed()
                );
            }
            if Instant::now() > deadline {
                panic!("no {what} within {limit:?}\n{}", self.printed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}
