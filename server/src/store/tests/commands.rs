//! The command part of the [`Store`] contract: records, invocations, the event history, the
//! idempotency keys and retention. Each check takes a fresh, empty store, like the rest of the
//! suite.

use std::sync::Arc;

use super::*;
use crate::command::model::{CommandState, InvocationState, RolloutPolicy};
use crate::command::record::{
    CommandEvent, CommandQuery, CommandRecord, CommandSpec, Counts, InvocationRecord, OutputEvent,
    OutputStream, Targets,
};
use crate::domain::CommandId;

/// A command id created at `ms` (ids carry their creation time).
fn command_id(ms: u64, tail: u32) -> CommandId {
    CommandId::new(format!("{ms:012x}{tail:08x}"))
}

fn time(ms: u64) -> Time {
    Time::new(at(ms)).expect("after 1970")
}

fn command(org_id: &str, id: &CommandId, ms: u64, finished: Option<u64>) -> CommandRecord {
    CommandRecord {
        id: id.clone(),
        org: org(org_id),
        spec: Arc::new(CommandSpec::Noop),
        targets: Targets {
            agent_ids: vec![agent_id("web-1")],
            selector: "env=prod".to_owned(),
            include_offline: false,
        },
        rollout: RolloutPolicy::default(),
        timeout: Duration::from_secs(30),
        deliver_by: time(ms + 60_000),
        kill_grace: Duration::from_secs(10),
        idempotency_key: String::new(),
        description: "test".to_owned(),
        sender_token: TokenId::new("tok"),
        sender_name: "operator".to_owned(),
        created_at: time(ms),
        output_limit: 1 << 20,
        n_invocations: 2,
        runnable: 2,
        paused: false,
        cancel_requested: false,
        offered_any: false,
        state: if finished.is_some() {
            CommandState::Succeeded
        } else {
            CommandState::Pending
        },
        counts: Counts::default(),
        finished_at: finished.map(time),
        last_cursor: 3,
    }
}

fn invocation(n: u32, agent: &str) -> InvocationRecord {
    InvocationRecord {
        n,
        agent: agent_id(agent),
        agent_name: agent.to_owned(),
        canary: n == 0,
        state: InvocationState::Queued,
        skip_reason: None,
        reason: String::new(),
        exit_code: None,
        signal: None,
        queued_at: time(1_000),
        offered_at: None,
        started_at: None,
        finished_at: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        head_bytes: 0,
        tail_bytes: 0,
        last_seq: 0,
    }
}

fn put_invocation(org_id: &str, command: &CommandId, record: InvocationRecord) -> Write {
    Write::PutInvocation {
        org: org(org_id),
        command: command.clone(),
        record: Box::new(record),
    }
}

fn output(n: u32, data: &[u8]) -> CommandEvent {
    CommandEvent::Output(OutputEvent {
        n,
        stream: OutputStream::Stdout,
        offset: 0,
        data: data.to_vec(),
        tail: false,
    })
}

fn put_event(org_id: &str, command: &CommandId, cursor: u64, event: CommandEvent) -> Write {
    Write::PutCommandEvent {
        org: org(org_id),
        command: command.clone(),
        cursor,
        event: Box::new(event),
    }
}

fn ids(records: &[CommandRecord]) -> Vec<CommandId> {
    records.iter().map(|r| r.id.clone()).collect()
}

pub(super) fn check_command_round_trip_and_active_list(store: &dyn Store) {
    let id = command_id(1_000, 1);
    let running = command("acme", &id, 1_000, None);
    store
        .commit_writes(&[Write::PutCommand(Box::new(running.clone()))])
        .expect("commit");
    assert_eq!(
        store.command(&org("acme"), &id).expect("read"),
        Some(running.clone())
    );
    assert_eq!(store.command(&org("beta"), &id).expect("read"), None);
    assert_eq!(
        store.active_commands().expect("active"),
        std::slice::from_ref(&running)
    );

    let finished = command("acme", &id, 1_000, Some(2_000));
    store
        .commit_writes(&[Write::PutCommand(Box::new(finished.clone()))])
        .expect("commit");
    assert_eq!(
        store.command(&org("acme"), &id).expect("read"),
        Some(finished)
    );
    assert_eq!(store.active_commands().expect("active"), []);
}

pub(super) fn check_commands_newest_first_filtered_and_paged(store: &dyn Store) {
    let mut writes = Vec::new();
    let mut all = Vec::new();
    for i in 0..6u64 {
        let id = command_id(10_000 + i * 1_000, 7);
        let mut record = command(
            "acme",
            &id,
            10_000 + i * 1_000,
            (i % 2 == 0).then_some(50_000),
        );
        if i == 5 {
            record.sender_token = TokenId::new("other");
        }
        writes.push(Write::PutCommand(Box::new(record.clone())));
        all.push(record);
    }
    writes.push(Write::PutCommand(Box::new(command(
        "beta",
        &command_id(99_000, 1),
        99_000,
        None,
    ))));
    store.commit_writes(&writes).expect("commit");
    let newest_first: Vec<CommandId> = all.iter().rev().map(|r| r.id.clone()).collect();
    let query = |page_size| CommandQuery {
        page_size,
        ..CommandQuery::default()
    };
    let org = org("acme");

    let page = store.commands(&org, &query(10), 1_000).expect("list");
    assert_eq!(ids(&page.commands), newest_first);
    assert_eq!(page.next_before, None);

    // Pages follow each other without overlap.
    let first = store.commands(&org, &query(4), 1_000).expect("list");
    assert_eq!(ids(&first.commands), newest_first[..4]);
    let before = first.next_before.clone().expect("more");
    let second = store
        .commands(
            &org,
            &CommandQuery {
                before: Some(before),
                ..query(4)
            },
            1_000,
        )
        .expect("list");
    assert_eq!(ids(&second.commands), newest_first[4..]);
    assert_eq!(second.next_before, None);

    // Filters: state, sender, creation time.
    let finished = store
        .commands(
            &org,
            &CommandQuery {
                states: vec![CommandState::Succeeded],
                ..query(10)
            },
            1_000,
        )
        .expect("list");
    assert_eq!(finished.commands.len(), 3);
    let by_sender = store
        .commands(
            &org,
            &CommandQuery {
                sender: Some("other".to_owned()),
                ..query(10)
            },
            1_000,
        )
        .expect("list");
    assert_eq!(ids(&by_sender.commands), [all[5].id.clone()]);
    let window = store
        .commands(
            &org,
            &CommandQuery {
                since: Some(at(11_000)),
                until: Some(at(13_000)),
                ..query(10)
            },
            1_000,
        )
        .expect("list");
    assert_eq!(
        ids(&window.commands),
        [all[2].id.clone(), all[1].id.clone()]
    );

    // A scan cap ends the page early, with where to continue.
    let capped = store
        .commands(
            &org,
            &CommandQuery {
                sender: Some("nobody".to_owned()),
                ..query(10)
            },
            2,
        )
        .expect("list");
    assert!(capped.commands.is_empty());
    assert_eq!(capped.next_before, Some(newest_first[1].clone()));
}

pub(super) fn check_invocations_in_order_and_paged(store: &dyn Store) {
    let id = command_id(1_000, 1);
    let mut writes: Vec<Write> = (0..300)
        .map(|n| put_invocation("acme", &id, invocation(n, &format!("a-{n}"))))
        .collect();
    writes.push(put_invocation(
        "acme",
        &command_id(1_000, 2),
        invocation(0, "x"),
    ));
    store.commit_writes(&writes).expect("commit");
    let all = store
        .invocations(&org("acme"), &id, None, 1_000)
        .expect("list");
    assert_eq!(
        all.iter().map(|i| i.n).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>(),
        "in number order, not text order"
    );
    let page = store
        .invocations(&org("acme"), &id, Some(255), 10)
        .expect("list");
    assert_eq!(
        page.iter().map(|i| i.n).collect::<Vec<_>>(),
        (256..266).collect::<Vec<_>>()
    );
    assert!(
        store
            .invocations(&org("beta"), &id, None, 10)
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .invocations(&org("acme"), &id, Some(u32::MAX), 10)
            .expect("list")
            .is_empty()
    );
}

pub(super) fn check_command_events_range_and_byte_cap(store: &dyn Store) {
    let id = command_id(1_000, 1);
    let acme = org("acme");
    let writes: Vec<Write> = (1..=10)
        .map(|cursor| put_event("acme", &id, cursor, output(0, &[b'x'; 100])))
        .collect();
    store.commit_writes(&writes).expect("commit");
    let cursors = |events: Vec<(u64, CommandEvent)>| -> Vec<u64> {
        events.into_iter().map(|(c, _)| c).collect()
    };
    assert_eq!(
        cursors(
            store
                .command_events(&acme, &id, 0, 10, 100, usize::MAX)
                .expect("read")
        ),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        cursors(
            store
                .command_events(&acme, &id, 3, 6, 100, usize::MAX)
                .expect("read")
        ),
        [4, 5, 6]
    );
    assert_eq!(
        cursors(
            store
                .command_events(&acme, &id, 0, 10, 2, usize::MAX)
                .expect("read")
        ),
        [1, 2]
    );
    // The byte cap stops a page, but a page always holds one event.
    let capped = store
        .command_events(&acme, &id, 0, 10, 100, 250)
        .expect("read");
    assert_eq!(capped.len(), 2);
    assert_eq!(
        store
            .command_events(&acme, &id, 0, 10, 100, 1)
            .expect("read")
            .len(),
        1
    );
    assert!(
        store
            .command_events(&acme, &id, 10, 10, 100, 1)
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .command_events(&acme, &id, u64::MAX, u64::MAX, 1, 1)
            .expect("read")
            .is_empty()
    );

    store
        .commit_writes(&[Write::DeleteCommandEvent {
            org: acme.clone(),
            command: id.clone(),
            cursor: 5,
        }])
        .expect("commit");
    let events = store
        .command_events(&acme, &id, 0, 10, 100, usize::MAX)
        .expect("read");
    assert_eq!(cursors(events.clone()), [1, 2, 3, 4, 6, 7, 8, 9, 10]);
    assert_eq!(events[0].1, output(0, &[b'x'; 100]));
    assert!(
        store
            .command_events(&org("beta"), &id, 0, 10, 100, usize::MAX)
            .expect("read")
            .is_empty()
    );
}

pub(super) fn check_idempotency_keys(store: &dyn Store) {
    let (old, new) = (command_id(1_000, 1), command_id(5_000, 2));
    let put = |org_id: &str, key: &str, command: &CommandId, ms: u64| Write::PutIdempotencyKey {
        org: org(org_id),
        key: key.to_owned(),
        command: command.clone(),
        created_at: time(ms),
    };
    store
        .commit_writes(&[
            put("acme", "deploy/42", &old, 1_000),
            put("acme", "deploy/42", &new, 5_000),
        ])
        .expect("commit");
    let acme = org("acme");
    assert_eq!(
        store
            .idempotent_command(&acme, "deploy/42", at(0))
            .expect("read"),
        Some(new.clone()),
        "the newest command of a key"
    );
    assert_eq!(
        store
            .idempotent_command(&acme, "deploy/42", at(5_001))
            .expect("read"),
        None,
        "a key older than the window is forgotten"
    );
    assert_eq!(
        store
            .idempotent_command(&acme, "deploy/4", at(0))
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .idempotent_command(&org("beta"), "deploy/42", at(0))
            .expect("read"),
        None
    );
}

pub(super) fn check_delete_command_removes_everything_it_owns(store: &dyn Store) {
    let acme = org("acme");
    let (gone, kept) = (command_id(1_000, 1), command_id(2_000, 2));
    let mut writes = Vec::new();
    for id in [&gone, &kept] {
        let mut record = command("acme", id, 1_000, Some(3_000));
        record.idempotency_key = "key".to_owned();
        writes.push(Write::PutCommand(Box::new(record)));
        writes.push(put_invocation("acme", id, invocation(0, "a")));
        writes.push(put_invocation("acme", id, invocation(1, "b")));
        for cursor in 1..=3 {
            writes.push(put_event("acme", id, cursor, output(0, b"x")));
        }
        writes.push(Write::PutIdempotencyKey {
            org: acme.clone(),
            key: "key".to_owned(),
            command: id.clone(),
            created_at: time(1_000),
        });
    }
    store.commit_writes(&writes).expect("commit");
    store
        .commit_writes(&[Write::DeleteCommand {
            org: acme.clone(),
            command: gone.clone(),
            n_invocations: 2,
            last_cursor: 3,
            idempotency_key: "key".to_owned(),
        }])
        .expect("commit");
    assert_eq!(store.command(&acme, &gone).expect("read"), None);
    assert!(
        store
            .invocations(&acme, &gone, None, 10)
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .command_events(&acme, &gone, 0, 10, 10, usize::MAX)
            .expect("read")
            .is_empty()
    );
    // The other command, and its idempotency entry, stay.
    assert!(store.command(&acme, &kept).expect("read").is_some());
    assert_eq!(
        store
            .invocations(&acme, &kept, None, 10)
            .expect("read")
            .len(),
        2
    );
    assert_eq!(
        store
            .command_events(&acme, &kept, 0, 10, 10, usize::MAX)
            .expect("read")
            .len(),
        3
    );
    assert_eq!(
        store.idempotent_command(&acme, "key", at(0)).expect("read"),
        Some(kept)
    );
}

pub(super) fn check_expired_commands(store: &dyn Store) {
    let old_done = command("acme", &command_id(1_000, 1), 1_000, Some(2_000));
    let old_running = command("acme", &command_id(1_500, 1), 1_500, None);
    let late_finish = command("beta", &command_id(1_800, 1), 1_800, Some(9_000));
    let young = command("beta", &command_id(8_000, 1), 8_000, Some(8_500));
    let beta_old = command("beta", &command_id(1_200, 1), 1_200, Some(1_300));
    store
        .commit_writes(
            &[&old_done, &old_running, &late_finish, &young, &beta_old]
                .map(|r| Write::PutCommand(Box::new(r.clone()))),
        )
        .expect("commit");
    let mut expired = ids(&store.expired_commands(at(5_000), 100).expect("read"));
    expired.sort();
    let mut want = vec![old_done.id.clone(), beta_old.id.clone()];
    want.sort();
    assert_eq!(expired, want);
    assert_eq!(store.expired_commands(at(5_000), 1).expect("read").len(), 1);
}
