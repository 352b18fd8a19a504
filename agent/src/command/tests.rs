//! The command subsystem with real processes, a real journal in a temporary state directory,
//! and the test playing the server: it drains reports as a session would, and acks when told.
//! Nothing waits on a fixed sleep: every wait is for a condition, bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::AgentStats;
use crate::command::config::CommandConfig;
use crate::command::manager::{Commands, MAX_UPDATE_OUTPUT_BYTES};
use crate::command::types::{
    CommandSpec, ExecSpec, Offer, Outcome, OutputStream, Step, Terminal, Update,
};

/// Upper bound of every wait; reached only when a test fails.
const WAIT: Duration = Duration::from_secs(30);

/// The test's side of the protocol: what a session and the server would do.
struct Server {
    commands: Commands,
    sent_through: u64,
    updates: Vec<Update>,
}

impl Server {
    fn open(dir: &Path, allow: &[&str]) -> Self {
        Self::with_config(dir, config(allow))
    }

    fn with_config(dir: &Path, config: CommandConfig) -> Self {
        let commands =
            Commands::open(&config, dir, Arc::new(AgentStats::new())).expect("open commands");
        // A fresh session: `Welcome` without acks.
        commands.on_welcome(&[], None);
        Self {
            commands,
            sent_through: 0,
            updates: Vec::new(),
        }
    }

    /// Takes every report the subsystem has now.
    fn drain(&mut self) {
        while let Some(report) = self.commands.next_report(self.sent_through) {
            self.sent_through = report.last_index;
            self.updates.extend(report.updates);
        }
    }

    /// Waits until `done` holds for the updates received so far.
    async fn until(&mut self, what: &str, done: impl Fn(&[Update]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let commands = self.commands.clone();
        loop {
            let ready = commands.ready().notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            self.drain();
            if done(&self.updates) {
                return;
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                panic!("timed out waiting for {what}; updates: {:#?}", self.updates);
            }
        }
    }

    async fn running(&mut self, id: &str) {
        self.until("RUNNING", |updates| {
            of(updates, id).any(|u| u.step == Step::Running)
        })
        .await;
    }

    async fn outcome(&mut self, id: &str) -> Outcome {
        self.until("a terminal update", |updates| {
            terminal(updates, id).is_some()
        })
        .await;
        terminal(&self.updates, id).expect("terminal")
    }

    fn offer(&self, offer: Offer) {
        self.commands.offer(Ok(offer));
    }

    /// Acks every update received so far.
    fn ack_all(&self) {
        let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
        for update in &self.updates {
            let seq = highest.entry(&update.invocation_id).or_default();
            *seq = (*seq).max(update.seq);
        }
        let acks: Vec<(String, u64)> = highest
            .into_iter()
            .map(|(id, seq)| (id.to_owned(), seq))
            .collect();
        self.commands.ack(&acks);
    }

    /// Output of `stream` received for `id`: (offset, data) per chunk, in order.
    fn chunks(&self, id: &str, stream: OutputStream) -> Vec<(u64, Vec<u8>)> {
        of(&self.updates, id)
            .flat_map(|u| u.output.iter())
            .filter(|chunk| chunk.stream == stream)
            .map(|chunk| (chunk.offset, chunk.data.clone()))
            .collect()
    }

    fn stdout(&self, id: &str) -> Vec<u8> {
        self.chunks(id, OutputStream::Stdout)
            .into_iter()
            .flat_map(|(_, data)| data)
            .collect()
    }
}

fn of<'a>(updates: &'a [Update], id: &'a str) -> impl Iterator<Item = &'a Update> + 'a {
    updates.iter().filter(move |u| u.invocation_id == id)
}

fn terminal(updates: &[Update], id: &str) -> Option<Outcome> {
    of(updates, id).find_map(|u| match &u.step {
        Step::Finished(outcome) => Some(outcome.clone()),
        Step::Output | Step::Running => None,
    })
}

fn config(allow: &[&str]) -> CommandConfig {
    CommandConfig {
        allow_exec: allow.iter().map(|p| (*p).to_owned()).collect(),
        ..CommandConfig::default()
    }
}

fn offer(id: &str, spec: CommandSpec) -> Offer {
    Offer {
        invocation_id: id.to_owned(),
        command_id: "cmd-1".to_owned(),
        spec,
        timeout: Some(WAIT),
        deliver_by: None,
        output_limit_bytes: 0,
        kill_grace: None,
    }
}

fn exec(argv: &[&str]) -> CommandSpec {
    exec_with(argv, &[], b"")
}

fn exec_with(argv: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> CommandSpec {
    CommandSpec::Exec(ExecSpec {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        working_dir: None,
        stdin: stdin.to_vec(),
    })
}

/// Whether `pid` is gone (or a zombie: dead, waiting to be reaped by whoever adopted it).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn until_dead(pid: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !is_dead(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still alive"
        );
        // Polls the kernel's view; the process is already signalled and only has to exit.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count_lines(path: &PathBuf) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[tokio::test]
async fn echo_reports_running_its_output_and_success_in_seq_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/bin/echo"]);
    server.offer(offer("inv-1", exec(&["/bin/echo", "hello", "world"])));
    let outcome = server.outcome("inv-1").await;
    assert_eq!(outcome.state, Terminal::Succeeded);
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(server.stdout("inv-1"), b"hello world\n");
    let seqs: Vec<u64> = of(&server.updates, "inv-1").map(|u| u.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(server.updates[0].step, Step::Running);
}

#[tokio::test]
async fn the_environment_is_only_what_the_command_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/usr/bin/env"]);
    server.offer(offer(
        "inv-1",
        exec_with(&["/usr/bin/env"], &[("GREETING", "hi")], b""),
    ));
    assert_eq!(server.outcome("inv-1").await.state, Terminal::Succeeded);
    // No PATH, HOME or anything else of the agent's own environment.
    assert_eq!(server.stdout("inv-1"), b"GREETING=hi\n");
}

#[tokio::test]
async fn stdin_is_delivered_then_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/bin/cat"]);
    server.offer(offer(
        "inv-1",
        exec_with(&["/bin/cat"], &[], b"line one\nline two\n"),
    ));
    // `cat` ends only once its input is closed.
    assert_eq!(server.outcome("inv-1").await.state, Terminal::Succeeded);
    assert_eq!(server.stdout("inv-1"), b"line one\nline two\n");
}

#[tokio::test]
async fn exit_codes_and_signals_are_failures_with_detail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/bin/sh"]);
    server.offer(offer(
        "code",
        exec(&["/bin/sh", "-c", "echo oops >&2; exit 3"]),
    ));
    server.offer(offer("signal", exec(&["/bin/sh", "-c", "kill -9 $$"])));
    let code = server.outcome("code").await;
    assert_eq!(code.state, Terminal::Failed);
    assert_eq!(code.exit_code, Some(3));
    assert!(
        code.reason.contains("exited with code 3"),
        "{}",
        code.reason
    );
    assert_eq!(
        server.chunks("code", OutputStream::Stderr),
        [(0, b"oops\n".to_vec())]
    );
    let signal = server.outcome("signal").await;
    assert_eq!(signal.state, Terminal::Failed);
    assert_eq!(signal.signal, Some(9));
    assert_eq!(signal.exit_code, None);
    assert!(signal.reason.contains("SIGKILL"), "{}", signal.reason);
}

#[tokio::test]
async fn a_program_that_cannot_start_fails_with_the_os_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/nonexistent/tool"]);
    server.offer(offer("inv-1", exec(&["/nonexistent/tool"])));
    let outcome = server.outcome("inv-1").await;
    assert_eq!(outcome.state, Terminal::Failed);
    assert!(
        outcome.reason.contains("No such file or directory"),
        "{}",
        outcome.reason
    );
    // It never ran: no RUNNING update, the failure is the first.
    assert_eq!(server.updates[0].seq, 1);
    assert!(matches!(server.updates[0].step, Step::Finished(_)));
}

#[tokio::test]
async fn refusals_name_the_setting_and_never_start_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = dir.path().join("ran");
    let mut server = Server::open(dir.path(), &["/usr/bin/*"]);
    let touch = format!("echo ran > {}", witness.display());
    for (id, spec) in [
        ("not-listed", exec(&["/bin/cat"])),
        ("relative", exec(&["env"])),
        ("shell-by-glob", exec(&["/usr/bin/sh", "-c", &touch])),
    ] {
        server.offer(offer(id, spec));
        let outcome = server.outcome(id).await;
        assert_eq!(outcome.state, Terminal::Rejected, "{id}");
        assert!(
            outcome.reason.contains("--allow-exec"),
            "{id}: {}",
            outcome.reason
        );
    }
    assert!(!witness.exists());
    assert_eq!(server.commands.inner().stats.invocations_accepted(), 0);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/bin/sh"]);
    // Both the shell and its background grandchild ignore SIGTERM: only SIGKILL to the group
    // ends them. The shell prints both pids first.
    let mut spec = offer(
        "inv-1",
        exec(&[
            "/bin/sh",
            "-c",
            "trap '' TERM; /bin/sleep 1000 & echo $$ $!; wait",
        ]),
    );
    spec.timeout = Some(Duration::from_millis(300));
    spec.kill_grace = Some(Duration::from_millis(200));
    server.offer(spec);
    server
        .until("both pids", |updates| {
            of(updates, "inv-1")
                .flat_map(|u| u.output.iter())
                .any(|chunk| chunk.data.ends_with(b"\n"))
        })
        .await;
    let outcome = server.outcome("inv-1").await;
    assert_eq!(outcome.state, Terminal::TimedOut);
    assert_eq!(outcome.signal, Some(9), "{}", outcome.reason);
    let pids = String::from_utf8(server.stdout("inv-1")).expect("utf-8");
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|pid| pid.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        until_dead(pid).await;
    }
}

#[tokio::test]
async fn cancel_stops_a_running_process_and_a_sleep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/bin/sleep"]);
    server.offer(offer("proc", exec(&["/bin/sleep", "1000"])));
    server.offer(offer("nap", CommandSpec::Sleep(Duration::from_secs(3600))));
    server.running("proc").await;
    server.running("nap").await;
    server.commands.cancel("proc");
    server.commands.cancel("nap");
    let proc = server.outcome("proc").await;
    assert_eq!(proc.state, Terminal::Cancelled);
    assert_eq!(proc.signal, Some(15), "SIGTERM was enough: {}", proc.reason);
    assert_eq!(server.outcome("nap").await.state, Terminal::Cancelled);
    // A cancel of an ended invocation changes nothing.
    server.commands.cancel("proc");
    server.drain();
    assert_eq!(
        of(&server.updates, "proc").count(),
        2,
        "RUNNING and CANCELLED"
    );
}

#[tokio::test]
async fn offers_beyond_the_slots_queue_in_order_and_can_be_cancelled_or_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::with_config(
        dir.path(),
        CommandConfig {
            max_concurrent: 1,
            ..config(&[])
        },
    );
    server.offer(offer(
        "first",
        CommandSpec::Sleep(Duration::from_secs(3600)),
    ));
    server.offer(offer("second", CommandSpec::Sleep(Duration::ZERO)));
    server.offer(offer("third", CommandSpec::Sleep(Duration::ZERO)));
    let deliver_by = SystemTime::now() + Duration::from_millis(50);
    let mut late = offer("late", CommandSpec::Sleep(Duration::ZERO));
    late.deliver_by = Some(deliver_by);
    server.offer(late);
    server.running("first").await;
    server.commands.cancel("second");
    // Let `late`'s delivery deadline pass while it still waits behind `first`.
    if let Ok(left) = deliver_by.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(1)).await;
    }
    assert_eq!(
        server.outcome("second").await.reason,
        "cancelled before it started"
    );
    server.commands.cancel("first");
    assert_eq!(server.outcome("first").await.state, Terminal::Cancelled);
    assert_eq!(server.outcome("third").await.state, Terminal::Succeeded);
    // Its deadline passed while it waited behind `first`.
    let late = server.outcome("late").await;
    assert_eq!(late.state, Terminal::DeliveryTimedOut, "{}", late.reason);
    assert!(
        late.reason.contains("commands.max_concurrent"),
        "{}",
        late.reason
    );
    let started: Vec<&str> = server
        .updates
        .iter()
        .filter(|u| u.step == Step::Running)
        .map(|u| u.invocation_id.as_str())
        .collect();
    assert_eq!(started, ["first", "third"]);
}

#[tokio::test]
async fn an_offer_past_its_deadline_and_a_noop_settle_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &[]);
    let mut late = offer("late", CommandSpec::Noop);
    late.deliver_by = Some(SystemTime::now() - Duration::from_secs(1));
    server.offer(late);
    server.offer(offer("noop", CommandSpec::Noop));
    assert_eq!(
        server.outcome("late").await.state,
        Terminal::DeliveryTimedOut
    );
    assert_eq!(server.outcome("noop").await.state, Terminal::Succeeded);
    // One update each, seq 1, nothing else.
    assert_eq!(server.updates.len(), 2);
    assert!(server.updates.iter().all(|u| u.seq == 1));
}

#[tokio::test]
async fn collect_succeeds_once_the_sampler_queued_a_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &[]);
    let commands = server.commands.clone();
    // The sampler's part, as `runner::sample_forever` plays it.
    let sampler = tokio::spawn(async move {
        commands.sampler().requested().await;
        commands.sampler().taken(42);
    });
    server.offer(offer("inv-1", CommandSpec::Collect));
    let outcome = server.outcome("inv-1").await;
    assert_eq!(outcome.state, Terminal::Succeeded);
    assert!(outcome.reason.contains("42"), "{}", outcome.reason);
    sampler.await.expect("sampler");
}

/// `seq 1 N` as the process prints it.
fn numbers(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

#[tokio::test]
async fn unacknowledged_output_keeps_its_head_and_tail_with_exact_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit: u64 = 64 << 10;
    let mut server = Server::with_config(
        dir.path(),
        CommandConfig {
            max_output_buffer_bytes: limit,
            ..config(&["/usr/bin/seq"])
        },
    );
    let expected = numbers(400_000);
    server.offer(offer("inv-1", exec(&["/usr/bin/seq", "1", "400000"])));
    // No ack at all, as if the server were unreachable.
    assert_eq!(server.outcome("inv-1").await.state, Terminal::Succeeded);
    let chunks = server.chunks("inv-1", OutputStream::Stdout);
    let mut received = 0;
    let mut next = 0;
    for (offset, data) in &chunks {
        assert!(data.len() <= MAX_UPDATE_OUTPUT_BYTES);
        assert!(*offset >= next, "chunks in order, never overlapping");
        let at = usize::try_from(*offset).expect("offset");
        assert_eq!(
            &expected[at..at + data.len()],
            &data[..],
            "bytes at their offset"
        );
        next = offset + data.len() as u64;
        received += data.len() as u64;
    }
    // The head from offset 0, the tail up to the last byte, and no more than the limit.
    assert_eq!(chunks[0].0, 0);
    assert_eq!(next, expected.len() as u64);
    assert!(received <= limit, "{received} bytes kept");
    let dropped = expected.len() as u64 - received;
    assert!(dropped > 0);
    assert!(
        chunks
            .windows(2)
            .any(|pair| pair[1].0 > pair[0].0 + pair[0].1.len() as u64),
        "the dropped middle shows as an offset jump"
    );
}

#[tokio::test]
async fn acknowledged_output_arrives_whole_in_coalesced_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::open(dir.path(), &["/usr/bin/seq"]);
    // ~200 KB: under the pending buffer of the default limit, so nothing can be cut.
    let expected = numbers(34_000);
    server.offer(offer("inv-1", exec(&["/usr/bin/seq", "1", "34000"])));
    server
        .until("the end", |u| terminal(u, "inv-1").is_some())
        .await;
    server.ack_all();
    assert_eq!(server.stdout("inv-1"), expected);
    let chunks = server.chunks("inv-1", OutputStream::Stdout);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert!(
        chunks
            .iter()
            .all(|(_, data)| data.len() <= MAX_UPDATE_OUTPUT_BYTES)
    );
    // Acked: the invocation is forgotten and its end journaled as acknowledged.
    assert!(server.commands.next_report(0).is_none());
    assert!(server.commands.journaled_ids().is_empty());
}

#[test]
fn a_crash_while_running_reopens_as_agent_restarted_numbered_after_the_servers_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crashed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    crashed.block_on(async {
        let mut server = Server::open(dir.path(), &[]);
        server.offer(offer(
            "inv-1",
            CommandSpec::Sleep(Duration::from_secs(3600)),
        ));
        server.running("inv-1").await;
        // The server stored RUNNING (seq 1).
        server.ack_all();
    });
    // The agent dies: its tasks vanish without finishing or stopping anything.
    drop(crashed);

    let restarted = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    restarted.block_on(async {
        let config = config(&[]);
        let commands =
            Commands::open(&config, dir.path(), Arc::new(AgentStats::new())).expect("reopen");
        assert_eq!(commands.journaled_ids(), ["inv-1"]);
        // Nothing is reported before `Welcome` says what the server holds.
        assert!(commands.next_report(0).is_none());
        commands.on_welcome(&[("inv-1".to_owned(), 1)], None);
        let report = commands.next_report(0).expect("the end");
        assert_eq!(report.updates.len(), 1);
        assert_eq!(report.updates[0].seq, 2);
        let Step::Finished(outcome) = &report.updates[0].step else {
            panic!("expected the end");
        };
        assert_eq!(outcome.state, Terminal::AgentRestarted);
        // A redelivered offer does not run it again.
        commands.offer(Ok(offer(
            "inv-1",
            CommandSpec::Sleep(Duration::from_secs(3600)),
        )));
        assert_eq!(commands.inner().stats.invocations_accepted(), 0);
        commands.ack(&[("inv-1".to_owned(), 2)]);
        assert!(commands.journaled_ids().is_empty());
        commands.stop().await;
    });
}

#[test]
fn a_finished_but_unacknowledged_result_is_sent_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    runtime().block_on(async {
        let mut server = Server::open(dir.path(), &["/bin/echo"]);
        server.offer(offer("inv-1", exec(&["/bin/echo", "done"])));
        assert_eq!(server.outcome("inv-1").await.state, Terminal::Succeeded);
        // The connection drops before any ack.
    });
    runtime().block_on(async {
        let commands = Commands::open(
            &config(&["/bin/echo"]),
            dir.path(),
            Arc::new(AgentStats::new()),
        )
        .expect("reopen");
        assert_eq!(commands.journaled_ids(), ["inv-1"]);
        // The server stored nothing: the journaled result goes out as seq 1, with the output's
        // final offset (the output itself was lost with the process).
        commands.on_welcome(&[("inv-1".to_owned(), 0)], None);
        let report = commands.next_report(0).expect("the result again");
        let update = &report.updates[0];
        assert_eq!(update.seq, 1);
        assert!(matches!(&update.step, Step::Finished(o) if o.state == Terminal::Succeeded));
        assert_eq!(update.output.len(), 1);
        assert_eq!(update.output[0].offset, 5);
        assert!(update.output[0].data.is_empty());
        commands.stop().await;
    });
    runtime().block_on(async {
        let commands = Commands::open(
            &config(&["/bin/echo"]),
            dir.path(),
            Arc::new(AgentStats::new()),
        )
        .expect("reopen");
        // This time the server had stored the end (seq 3: RUNNING, output, end); only the ack
        // was lost.
        commands.on_welcome(&[("inv-1".to_owned(), 3)], None);
        assert!(commands.next_report(0).is_none());
        assert!(commands.journaled_ids().is_empty());
        commands.stop().await;
    });
}

#[tokio::test]
async fn a_redelivered_offer_never_runs_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let append = format!("echo run >> {}", runs.display());
    let spec = || exec(&["/bin/sh", "-c", &append]);
    let mut server = Server::open(dir.path(), &["/bin/sh"]);
    // Delivered twice before it even started, once more while it ran or after it ended.
    server.offer(offer("inv-1", spec()));
    server.offer(offer("inv-1", spec()));
    assert_eq!(server.outcome("inv-1").await.state, Terminal::Succeeded);
    server.offer(offer("inv-1", spec()));
    server.ack_all();
    // Delivered after its end was acknowledged: the result is reported again, not re-run.
    server.offer(offer("inv-1", spec()));
    server
        .until("the result reported again", |updates| {
            of(updates, "inv-1")
                .filter(|u| matches!(u.step, Step::Finished(_)))
                .count()
                == 2
        })
        .await;
    server.commands.stop().await;
    // And after a restart.
    let mut restarted = Server::open(dir.path(), &["/bin/sh"]);
    restarted.offer(offer("inv-1", spec()));
    assert_eq!(restarted.outcome("inv-1").await.state, Terminal::Succeeded);
    assert_eq!(count_lines(&runs), 1);
    assert_eq!(restarted.commands.inner().stats.invocations_accepted(), 0);
}
