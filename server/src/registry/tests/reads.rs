//! Reads of the registry: a listing page stops before the agent that would exceed its bytes, and
//! the alert reads select silent, critical and online agents through the index.

use super::*;

#[test]
fn a_listing_page_stops_before_the_agent_that_would_exceed_its_bytes() {
    let f = fixture(&[("a-1", "hw-1"), ("a-2", "hw-2"), ("a-3", "hw-3")]);
    let one = f.registry.read().orgs[&org()][&id("a-1")].size_bytes();
    let page = |after: Option<&str>, max_bytes: usize| {
        let page = f.registry.list(
            &org(),
            &AgentListQuery {
                page_size: 100,
                max_bytes,
                after: after.map(id),
                ..AgentListQuery::default()
            },
        );
        let ids: Vec<String> = page
            .agents
            .iter()
            .map(|a| a.record.id.to_string())
            .collect();
        (ids, page.next_after.map(|a| a.to_string()), page.total)
    };
    assert_eq!(
        page(None, 2 * one + one / 2),
        (vec!["a-1".into(), "a-2".into()], Some("a-2".into()), 3)
    );
    assert_eq!(
        page(Some("a-2"), 2 * one + one / 2),
        (vec!["a-3".into()], None, 3)
    );
    // A page holds at least one agent, whatever its size.
    assert_eq!(page(None, 1), (vec!["a-1".into()], Some("a-1".into()), 3));
}

#[test]
fn alert_reads_select_silent_critical_and_online_agents_through_the_index() {
    let f = fixture(&[("a-1", "hw-1"), ("a-2", "hw-2"), ("a-3", "hw-3")]);
    let all = Selector::default();
    let none = Selector::parse("env=dev").expect("selector");
    let ids = |c: Vec<Candidate>| c.into_iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(f.registry.silent_agents(&OrgId::new("acme"), &all)).len(),
        3
    );
    assert!(
        f.registry
            .silent_agents(&OrgId::new("acme"), &none)
            .is_empty()
    );
    assert!(
        f.registry
            .silent_agents(&OrgId::new("other"), &all)
            .is_empty()
    );
    f.open("a-1", "s-1");
    f.open("a-2", "s-2");
    assert_eq!(
        ids(f.registry.silent_agents(&OrgId::new("acme"), &all)),
        ["a-3"]
    );
    assert_eq!(f.registry.online_count(&OrgId::new("acme"), &all), (2, 3));
    assert_eq!(f.registry.online_count(&OrgId::new("acme"), &none), (0, 0));
    assert!(
        f.registry
            .critical_agents(&OrgId::new("acme"), &all)
            .is_empty()
    );
    let mut hot = sample(1);
    hot.cpu_percent = 99.0;
    f.registry
        .samples_committed(vec![(OrgId::new("acme"), AgentId::new("a-2"), hot, 1)]);
    assert_eq!(
        ids(f.registry.critical_agents(&OrgId::new("acme"), &all)),
        ["a-2"]
    );
    f.registry.samples_committed(vec![(
        OrgId::new("acme"),
        AgentId::new("a-2"),
        sample(2),
        2,
    )]);
    assert!(
        f.registry
            .critical_agents(&OrgId::new("acme"), &all)
            .is_empty()
    );
}
