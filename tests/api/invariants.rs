//! The routing invariants, checked straight from the database: under concurrent workers on
//! several nodes, when a job runs twice, and after a crash left work undone.
//!
//! 1. An agent never holds more active conversations than its capacity, and its `active_chats`
//!    counter equals the conversations it holds.
//! 2. A conversation has at most one current (unreleased) assignment: exactly one while active,
//!    with the agent the conversation names, none otherwise; a live conversation has exactly one
//!    open thread, its active thread.
//! 3. The line is served in order: priority (high first), then queue time, then id.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    agents, assignments, conversations,
    enums::{AuthorType, ClosedBy, ConversationStatus, EventKind, Priority, ThreadStatus},
    events, groups, threads, visitors,
};
use jobs::{
    Job, JobContext,
    assign_agent::AssignAgent,
    close_conversation::CloseConversation,
    enqueue_conversation::EnqueueConversation,
    reassign_conversation::ReassignConversation,
    reconcile::{Repairs, reconcile},
};
use reqwest::StatusCode;
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use switchboard::{
    config::{Command, Settings},
    startup::prepare_database,
};
use tokio::task::JoinSet;

use crate::{both_backends, helpers::*};

/// Every row the invariants speak about.
#[derive(Debug, Clone, PartialEq)]
struct World {
    conversations: Vec<conversations::Model>,
    agents: Vec<agents::Model>,
    assignments: Vec<assignments::Model>,
    threads: Vec<threads::Model>,
    events: Vec<events::Model>,
}

/// Every row, as of one moment: the tables are read in one transaction (repeatable read on
/// PostgreSQL; a SQLite read transaction sees one snapshot), so jobs committing meanwhile cannot
/// make a counter and the rows it counts disagree.
async fn world(db: &DatabaseConnection) -> World {
    use sea_orm::{IsolationLevel, TransactionTrait};
    let isolation = (db.get_database_backend() == sea_orm::DatabaseBackend::Postgres)
        .then_some(IsolationLevel::RepeatableRead);
    let txn = db.begin_with_config(isolation, None).await.unwrap();
    let db = &txn;
    let world = World {
        conversations: conversations::Entity::find()
            .order_by_asc(conversations::Column::Id)
            .all(db)
            .await
            .unwrap(),
        agents: agents::Entity::find()
            .order_by_asc(agents::Column::Id)
            .all(db)
            .await
            .unwrap(),
        assignments: assignments::Entity::find()
            .order_by_asc(assignments::Column::Id)
            .all(db)
            .await
            .unwrap(),
        threads: threads::Entity::find()
            .order_by_asc(threads::Column::Id)
            .all(db)
            .await
            .unwrap(),
        events: events::Entity::find()
            .order_by_asc(events::Column::Id)
            .all(db)
            .await
            .unwrap(),
    };
    txn.commit().await.unwrap();
    world
}

impl World {
    fn with_status(&self, status: ConversationStatus) -> BTreeSet<i64> {
        self.conversations
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.id)
            .collect()
    }

    fn conversation(&self, id: i64) -> &conversations::Model {
        self.conversations
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("conversation {id} exists"))
    }

    fn agent(&self, id: i64) -> &agents::Model {
        self.agents
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("agent {id} exists"))
    }

    /// Ids of every conversation in serving order: priority, queue time, id.
    fn line_order(&self) -> Vec<i64> {
        let mut line: Vec<_> = self.conversations.iter().collect();
        line.sort_by_key(|c| (c.priority.to_value(), c.queued_at, c.id));
        line.into_iter().map(|c| c.id).collect()
    }

    fn events_of(&self, conversation: i64, starting: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.conversation_id == conversation && e.content.starts_with(starting))
            .count()
    }

    /// Invariants 1 and 2, on every agent and conversation.
    fn assert_consistent(&self) {
        for agent in &self.agents {
            let held = self
                .conversations
                .iter()
                .filter(|c| {
                    c.status == ConversationStatus::Active && c.assigned_agent_id == Some(agent.id)
                })
                .count();
            let held = i32::try_from(held).unwrap();
            assert!(
                held <= agent.max_concurrent_chats,
                "agent {} holds {held} chats, capacity {}",
                agent.id,
                agent.max_concurrent_chats
            );
            assert_eq!(
                agent.active_chats, held,
                "agent {}: counter {} but {held} active conversations",
                agent.id, agent.active_chats
            );
        }
        for conversation in &self.conversations {
            let current: Vec<_> = self
                .assignments
                .iter()
                .filter(|a| a.conversation_id == conversation.id && a.released_at.is_none())
                .collect();
            let open: Vec<_> = self
                .threads
                .iter()
                .filter(|t| {
                    t.conversation_id == conversation.id && t.status == ThreadStatus::Active
                })
                .collect();
            match conversation.status {
                ConversationStatus::Active => {
                    assert_eq!(
                        current.len(),
                        1,
                        "active conversation {} has {} current assignments",
                        conversation.id,
                        current.len()
                    );
                    assert_eq!(
                        Some(current[0].agent_id),
                        conversation.assigned_agent_id,
                        "conversation {}: its current assignment names another agent",
                        conversation.id
                    );
                }
                _ => assert!(
                    current.is_empty(),
                    "{:?} conversation {} still has a current assignment",
                    conversation.status,
                    conversation.id
                ),
            }
            match conversation.status {
                ConversationStatus::Pending | ConversationStatus::Active => {
                    assert_eq!(
                        open.len(),
                        1,
                        "live conversation {} has {} open threads",
                        conversation.id,
                        open.len()
                    );
                    assert_eq!(conversation.active_thread_id, Some(open[0].id));
                }
                _ => assert!(
                    open.is_empty(),
                    "finished conversation {} has an open thread",
                    conversation.id
                ),
            }
            if conversation.status == ConversationStatus::Pending {
                assert_eq!(conversation.assigned_agent_id, None);
            }
        }
    }
}

async fn account_of(app: &TestApp, group: i64) -> i64 {
    groups::Entity::find_by_id(group)
        .one(app.db())
        .await
        .unwrap()
        .expect("the group")
        .account_id
}

/// A quiet moment for a racing worker to do what it should not (over-assign, assign twice).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

fn eight_workers(settings: &mut Settings) {
    settings.worker_concurrency = 8;
}

both_backends! {
    async fn no_agent_exceeds_capacity_and_the_line_is_served_in_order_by_three_nodes(backend: Backend) {
        let started = std::time::Instant::now();
        let storage = Storage::new(backend).await;
        let app = Arc::new(spawn_with(storage.clone(), Command::All, eight_workers).await);
        let workers = [
            spawn_with(storage.clone(), Command::Work, eight_workers).await,
            spawn_with(storage.clone(), Command::Work, eight_workers).await,
        ];
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let account = account_of(&app, group).await;
        let mut agent_tokens = Vec::new();
        for _ in 0..5 {
            agent_tokens.push(app.agent_in_group(&admin, group, 3).await.1);
        }

        // 40 visitors arrive at once while nobody is online: the line forms.
        let priorities = [Some("low"), Some("high"), None, Some("normal"), Some("high"), Some("low"), Some("normal")];
        let mut sessions = JoinSet::new();
        for n in 0..40 {
            let app = app.clone();
            let mut body = json!({ "initialMessage": format!("visitor {n}") });
            if let Some(priority) = priorities[n % priorities.len()] {
                body["priority"] = json!(priority);
            }
            sessions.spawn(async move { app.visitor(body).await.0 });
        }
        let created: BTreeSet<i64> = sessions.join_all().await.into_iter().collect();
        assert_eq!(created.len(), 40);

        // Everyone comes online at once, and 50 more assign jobs land on the three nodes' stores.
        let stores = [app.state.jobs.clone(), workers[0].state.jobs.clone(), workers[1].state.jobs.clone()];
        let mut burst = JoinSet::new();
        for token in &agent_tokens {
            let (app, token) = (app.clone(), token.clone());
            burst.spawn(async move {
                app.set_status(&token, "online").await;
            });
        }
        for n in 0..50 {
            let store = stores[n % stores.len()].clone();
            burst.spawn(async move {
                store.submit(AssignAgent::new(account, group)).await.expect("submitted");
            });
        }
        burst.join_all().await;

        let count = |status: ConversationStatus| {
            let db = app.db().clone();
            async move {
                conversations::Entity::find()
                    .filter(conversations::Column::Status.eq(status))
                    .count(&db)
                    .await
                    .unwrap()
            }
        };
        eventually(Duration::from_secs(20), "15 active conversations", || async {
            (count(ConversationStatus::Active).await == 15).then_some(())
        })
        .await;
        settle().await;

        let now = world(app.db()).await;
        now.assert_consistent();
        let ids: BTreeSet<i64> = now.conversations.iter().map(|c| c.id).collect();
        assert_eq!(ids, created, "every conversation is kept, none is added");
        assert_eq!(now.with_status(ConversationStatus::Active).len(), 15);
        assert_eq!(now.with_status(ConversationStatus::Pending).len(), 25);
        assert_eq!(now.assignments.len(), 15, "no conversation was assigned twice");
        let line = now.line_order();
        let head: BTreeSet<i64> = line[..15].iter().copied().collect();
        assert_eq!(
            now.with_status(ConversationStatus::Active),
            head,
            "the first 15 in line are served; line: {:?}",
            line.iter().map(|id| {
                let c = now.conversation(*id);
                (c.id, c.priority, c.queued_at, c.status)
            }).collect::<Vec<_>>()
        );
        for agent in now.agents.iter().filter(|a| a.role != entity::enums::AgentRole::Admin) {
            assert_eq!(agent.active_chats, 3, "every agent is full");
        }

        // All 15 are resolved at once: the next 15 in line take their places.
        let mut closes = JoinSet::new();
        for &id in &head {
            let (app, admin) = (app.clone(), admin.clone());
            closes.spawn(async move {
                app.close_conversation(&admin, id).await;
            });
        }
        closes.join_all().await;
        eventually(Duration::from_secs(20), "15 resolved and the next 15 active", || async {
            (count(ConversationStatus::Resolved).await == 15 && count(ConversationStatus::Active).await == 15)
                .then_some(())
        })
        .await;
        settle().await;

        let now = world(app.db()).await;
        now.assert_consistent();
        assert_eq!(now.conversations.len(), 40);
        assert_eq!(now.with_status(ConversationStatus::Resolved), head);
        assert_eq!(
            now.with_status(ConversationStatus::Active),
            line[15..30].iter().copied().collect::<BTreeSet<_>>(),
            "the next 15 in line are served"
        );
        assert_eq!(now.with_status(ConversationStatus::Pending).len(), 10);
        assert_eq!(now.assignments.len(), 30, "no conversation was assigned twice");
        for id in &head {
            assert_eq!(now.events_of(*id, "Closed by the agent"), 1, "conversation {id}");
        }
        eprintln!("{backend:?}: 40 visitors, 3 nodes, two rounds of 15 in {:?}", started.elapsed());
    }
}

/// An API node with no workers on fresh storage: jobs are submitted but only the test runs them.
async fn api_node_without_workers(backend: Backend) -> TestApp {
    let storage = Storage::new(backend).await;
    prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrate");
    spawn_with(storage, Command::Serve, |_| {}).await
}

/// Runs `job` twice; asserts the second run changes no row. Returns the world after the first.
async fn run_twice<J: Job>(ctx: &JobContext, job: J) -> World {
    job.clone().run(ctx).await.expect("the first run succeeds");
    let once = world(&ctx.db).await;
    job.run(ctx).await.expect("the second run succeeds");
    let twice = world(&ctx.db).await;
    assert_eq!(twice, once, "the second run changed rows");
    once.assert_consistent();
    once
}

both_backends! {
    async fn every_lifecycle_job_run_twice_changes_nothing_the_second_time(backend: Backend) {
        let app = api_node_without_workers(backend).await;
        let ctx = app.state.job_context();
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let account = account_of(&app, group).await;
        let (agent, _) = app.online_agent(&admin, group, 3).await;
        let (first, _) = app.visitor(json!({ "initialMessage": "first" })).await;

        // Enqueue with one key: one "queued" event, the place in line kept.
        let before = world(app.db()).await;
        let once = run_twice(&ctx, EnqueueConversation { conversation_id: first, key: "enqueue-1".into(), entered_at_position: None }).await;
        assert_eq!(once.events_of(first, "Queued at position 1"), 1);
        assert_eq!(once.conversation(first).queued_at, before.conversation(first).queued_at);

        // Assign: one assignment, one slot taken.
        let once = run_twice(&ctx, AssignAgent::new(account, group)).await;
        assert_eq!(once.conversation(first).status, ConversationStatus::Active);
        assert_eq!(once.conversation(first).assigned_agent_id, Some(agent));
        assert_eq!(once.assignments.len(), 1);
        assert_eq!(once.agent(agent).active_chats, 1);
        assert_eq!(once.events_of(first, "Assigned to"), 1);

        // Two more chats for the same agent, so a double release would show in its counter.
        let (second, _) = app.visitor(json!({})).await;
        let (third, _) = app.visitor(json!({})).await;
        AssignAgent::new(account, group).run(&ctx).await.unwrap();
        let before = world(app.db()).await;
        assert_eq!(before.agent(agent).active_chats, 3);

        // Close: resolved once, one slot back, one "closed" event, its threads closed once.
        let once = run_twice(&ctx, CloseConversation { conversation_id: first, closed_by: ClosedBy::Agent, reason: "resolved".into(), intent: None }).await;
        assert_eq!(once.conversation(first).status, ConversationStatus::Resolved);
        assert_eq!(once.agent(agent).active_chats, 2);
        assert_eq!(once.events_of(first, "Closed by the agent: resolved"), 1);
        let threads: Vec<_> = once.threads.iter().filter(|t| t.conversation_id == first).collect();
        assert_eq!(threads.len(), 2, "the queue thread and the agent's thread, no new one");
        assert!(threads.iter().all(|t| t.status == ThreadStatus::Closed));
        assert_eq!(
            threads.iter().filter(|t| t.closed_by == Some(ClosedBy::Agent)).count(),
            1,
            "only the agent's thread is closed by the close"
        );

        // Reassign: counted once, one slot back, one "reassigned" event, back in line.
        let once = run_twice(&ctx, ReassignConversation { conversation_id: second, from_agent_id: agent, reason: jobs::conversation::ReleaseReason::Transferred, to_group_id: None, detail: None, intent: None }).await;
        let moved = once.conversation(second);
        assert_eq!(moved.status, ConversationStatus::Pending);
        assert_eq!(moved.reassignment_count, 1);
        assert_eq!(moved.queued_at, before.conversation(second).queued_at, "its place in line is kept");
        assert_eq!(once.agent(agent).active_chats, 1);
        assert_eq!(once.events_of(second, "Reassigned: transferred by the agent"), 1);
        assert_eq!(once.conversation(third).status, ConversationStatus::Active, "the other chat stays");

        // The transferring agent is excluded: assigning again leaves it waiting.
        let once = run_twice(&ctx, AssignAgent::new(account, group)).await;
        assert_eq!(once.conversation(second).status, ConversationStatus::Pending);
        assert_eq!(once.agent(agent).active_chats, 1);
    }
}

/// Deletes every task the job storage holds; returns how many rows or keys went.
async fn lose_every_job(app: &TestApp) -> u64 {
    match &app.state.jobs {
        jobs::JobStore::Sqlite(pool) => {
            let db = sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.clone());
            db.execute_unprepared("DELETE FROM Jobs")
                .await
                .unwrap()
                .rows_affected()
        }
        jobs::JobStore::Redis { .. } => {
            let client = redis::Client::open(redis_url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let pattern = format!("{}:*", app.storage.redis_prefix);
            let mut cursor = 0u64;
            let mut deleted = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if !keys.is_empty() {
                    let removed: u64 = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    deleted += removed;
                }
                if next == 0 {
                    break deleted;
                }
                cursor = next;
            }
        }
    }
}

both_backends! {
    async fn a_conversation_whose_jobs_were_lost_is_assigned_after_reconcile(backend: Backend) {
        let api = api_node_without_workers(backend).await;
        let admin = api.admin_token().await;
        let group = api.default_group(&admin).await;
        let (agent, _) = api.online_agent(&admin, group, 2).await;
        let (id, _) = api.visitor(json!({ "initialMessage": "anyone there?" })).await;
        assert!(lose_every_job(&api).await > 0, "the enqueue and assign jobs were stored");

        let worker = spawn_with(api.storage.clone(), Command::Work, |_| {}).await;
        settle().await;
        let conversation = conversations::Entity::find_by_id(id).one(api.db()).await.unwrap().unwrap();
        assert_eq!(conversation.status, ConversationStatus::Pending, "nothing knows it waits");

        let repairs = reconcile(&worker.state.job_context()).await.expect("reconcile");
        assert_eq!(repairs, Repairs { groups_offered: 1, conversations_enqueued: 0, counters_fixed: 0, conversations_released: 0, agents_dropped: 0, conversations_rehomed: 0 });
        let conversation = api.conversation_becomes(&admin, id, "active").await;
        assert_eq!(conversation["assignedAgentId"], agent);
        world(api.db()).await.assert_consistent();
    }
}

/// `count` agents of the group's account, written straight to the database, offline.
async fn add_offline_colleagues(app: &TestApp, group: i64, count: usize) {
    let account = account_of(app, group).await;
    let now = Utc::now();
    let rows = (0..count).map(|n| agents::ActiveModel {
        account_id: Set(account),
        name: Set(format!("Colleague {n}")),
        email: Set(format!("colleague-{n}@example.com")),
        password_hash: Set("not-a-hash".into()),
        role: Set(entity::enums::AgentRole::Agent),
        status: Set(entity::enums::AgentStatus::Offline),
        accepting_chats: Set(false),
        max_concurrent_chats: Set(3),
        active_chats: Set(0),
        token_version: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    });
    agents::Entity::insert_many(rows)
        .exec_without_returning(app.db())
        .await
        .unwrap();
}

both_backends! {
    async fn a_drifted_chat_counter_is_repaired_by_reconcile(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        // A team of fifty colleagues (offline), so a repair pass takes as long as a real one.
        add_offline_colleagues(&app, group, 50).await;
        let (agent, token) = app.online_agent(&admin, group, 2).await;
        let (first, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, first, "active").await;

        // The counter says full though the agent holds one chat: the next visitor waits.
        let drifted = agents::Entity::update_many()
            .col_expr(agents::Column::ActiveChats, sea_orm::sea_query::Expr::value(2))
            .filter(agents::Column::Id.eq(agent))
            .exec(app.db())
            .await
            .unwrap();
        assert_eq!(drifted.rows_affected, 1);
        let (second, _) = app.visitor(json!({})).await;
        settle().await;
        assert_eq!(app.conversation(&admin, second).await["status"], "pending");

        let ctx = app.state.job_context();
        let repairs = reconcile(&ctx).await.expect("reconcile");
        assert_eq!(repairs.counters_fixed, 1, "{repairs:?}");
        assert_eq!(repairs.groups_offered, 1, "{repairs:?}");
        // The freed slot serves the waiting visitor without another pass.
        let conversation = eventually(Duration::from_secs(5), "the waiting visitor to be served after the repair", || async {
            let reply = app.try_conversation(&admin, second).await;
            (reply.body["status"] == "active").then_some(reply.body)
        })
        .await;
        assert_eq!(conversation["assignedAgentId"], agent);
        assert_eq!(app.me(&token).await["activeChats"], 2);
        world(app.db()).await.assert_consistent();
        // The repair is on the record, by the system.
        let audit = eventually(Duration::from_secs(10), "the repair in the audit log", || async {
            let reply = app.try_audit(&admin, None).await;
            reply.body["items"].as_array().unwrap().iter().find(|r| r["action"] == "agent.counter_repaired").cloned()
        })
        .await;
        assert_eq!(audit["subjectId"], agent, "{audit}");
        assert_eq!(audit["actorAgentId"], serde_json::Value::Null, "{audit}");
        assert_eq!(audit["details"]["counted"], 2, "{audit}");

        // A counter below the truth would let the agent take more than it may: repaired too.
        agents::Entity::update_many()
            .col_expr(agents::Column::ActiveChats, sea_orm::sea_query::Expr::value(0))
            .filter(agents::Column::Id.eq(agent))
            .exec(app.db())
            .await
            .unwrap();
        let repairs = reconcile(&ctx).await.expect("reconcile");
        assert_eq!(repairs, Repairs { groups_offered: 0, conversations_enqueued: 0, counters_fixed: 1, conversations_released: 0, agents_dropped: 0, conversations_rehomed: 0 });
        world(app.db()).await.assert_consistent();

        // A healthy system: nothing to repair.
        assert_eq!(reconcile(&ctx).await.expect("reconcile"), Repairs::default());
    }
}

both_backends! {
    async fn a_conversation_never_put_in_line_is_enqueued_by_reconcile(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let account = account_of(&app, group).await;
        let (agent, token) = app.agent_in_group(&admin, group, 2).await;

        // What a crash between the insert and the queueing would leave: pending, no place in line.
        let now = Utc::now();
        let visitor = visitors::ActiveModel {
            account_id: Set(account),
            metadata: Set(json!({})),
            session_token_hash: Set(format!("{:064}", 7)),
            created_at: Set(now),
            last_seen_at: Set(now),
            ..Default::default()
        }
        .insert(app.db())
        .await
        .unwrap();
        let conversation = conversations::ActiveModel {
            account_id: Set(account),
            visitor_id: Set(visitor.id),
            group_id: Set(group),
            status: Set(ConversationStatus::Pending),
            priority: Set(Priority::Normal),
            queued_at: Set(None),
            reassignment_count: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(app.db())
        .await
        .unwrap();
        let thread = threads::ActiveModel {
            account_id: Set(account),
            conversation_id: Set(conversation.id),
            status: Set(ThreadStatus::Active),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(app.db())
        .await
        .unwrap();
        let id = conversations::ActiveModel {
            id: Set(conversation.id),
            active_thread_id: Set(Some(thread.id)),
            ..Default::default()
        }
        .update(app.db())
        .await
        .unwrap()
        .id;

        let repairs = reconcile(&app.state.job_context()).await.expect("reconcile");
        assert_eq!(repairs, Repairs { groups_offered: 1, conversations_enqueued: 1, counters_fixed: 0, conversations_released: 0, agents_dropped: 0, conversations_rehomed: 0 });
        // The enqueue job gives it its place and announces it, once.
        let queued = eventually(Duration::from_secs(10), "the conversation to be queued", || async {
            let now = world(app.db()).await;
            (now.conversation(id).queued_at.is_some()
                && now.events_of(id, "Queued at position 1 in General") == 1
                && now.events_of(id, "Repaired: it was never put in line (its enqueue was lost); queued it now") == 1)
                .then_some(now)
        })
        .await;
        queued.assert_consistent();
        let event = queued.events.iter().find(|e| e.conversation_id == id && e.content.starts_with("Queued")).unwrap();
        assert_eq!((event.kind, event.author_type, event.thread_id), (EventKind::System, AuthorType::System, thread.id));
        assert!(queued.conversation(id).queued_at.unwrap() >= now);

        // And it is served like any other.
        app.set_status(&token, "online").await;
        let served = app.conversation_becomes(&admin, id, "active").await;
        assert_eq!(served["assignedAgentId"], agent);
        let served = world(app.db()).await;
        served.assert_consistent();
        assert_eq!(served.events_of(id, "Queued at position"), 1);
    }
}

both_backends! {
    async fn crossing_transfers_between_two_agents_never_fail_with_a_server_error(backend: Backend) {
        let app = Arc::new(spawn_app(backend).await);
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (ana, _) = app.online_agent(&admin, group, 2).await;
        let (first, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, first, "active").await;
        let (bo, _) = app.online_agent(&admin, group, 2).await;
        let (second, _) = app.visitor(json!({})).await;
        let view = app.conversation_becomes(&admin, second, "active").await;
        assert_eq!(view["assignedAgentId"], bo);
        // Each round, the two agents hand each other their chat at the same moment.
        for round in 0..10 {
            let mut swaps = JoinSet::new();
            for id in [first, second] {
                let (app, admin) = (app.clone(), admin.clone());
                swaps.spawn(async move {
                    let holder = app.conversation(&admin, id).await["assignedAgentId"].as_i64().unwrap();
                    let to = if holder == ana { bo } else { ana };
                    app.try_transfer(&admin, id, json!({ "agentId": to })).await
                });
            }
            for reply in swaps.join_all().await {
                assert!(
                    reply.status == StatusCode::OK || reply.status == StatusCode::CONFLICT,
                    "round {round}: a crossing transfer answered {} {:?}",
                    reply.status,
                    reply.body
                );
            }
            world(app.db()).await.assert_consistent();
        }
    }
}

both_backends! {
    async fn chats_held_by_an_offline_or_deleted_agent_go_back_to_the_line_on_reconcile(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (gone, _) = app.online_agent(&admin, group, 1).await;
        let (left, _) = app.online_agent(&admin, group, 1).await;
        let (first, _) = app.visitor(json!({})).await;
        let (second, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, first, "active").await;
        app.conversation_becomes(&admin, second, "active").await;
        let holder = |id: i64| {
            let app = &app;
            let admin = admin.clone();
            async move { app.conversation(&admin, id).await["assignedAgentId"].as_i64().unwrap() }
        };
        let by_agent = [(holder(first).await, first), (holder(second).await, second)];
        let chat_of = |agent: i64| by_agent.iter().find(|(a, _)| *a == agent).unwrap().1;

        // What a lost hand-over leaves: one agent offline and one deleted, each still holding a
        // chat (written straight to the rows, as a crash between the two steps would).
        agents::Entity::update_many()
            .col_expr(agents::Column::Status, sea_orm::sea_query::Expr::value(entity::enums::AgentStatus::Offline.to_value()))
            .filter(agents::Column::Id.eq(gone))
            .exec(app.db())
            .await
            .unwrap();
        agents::Entity::update_many()
            .col_expr(agents::Column::DeletedAt, sea_orm::sea_query::Expr::value(Some(Utc::now())))
            .filter(agents::Column::Id.eq(left))
            .exec(app.db())
            .await
            .unwrap();

        let repairs = reconcile(&app.state.job_context()).await.expect("reconcile");
        assert_eq!(repairs.conversations_released, 2, "{repairs:?}");
        for agent in [gone, left] {
            let id = chat_of(agent);
            let back = eventually(Duration::from_secs(10), "the chat to be back in line", || async {
                let now = world(app.db()).await;
                (now.conversation(id).status == ConversationStatus::Pending
                    && now.events_of(id, "Reassigned: repaired: its agent was offline or deleted and still held it") == 1)
                    .then_some(now)
            })
            .await;
            back.assert_consistent();
        }
        // Nothing left to release.
        assert_eq!(reconcile(&app.state.job_context()).await.expect("reconcile").conversations_released, 0);
    }
}

both_backends! {
    async fn lifecycle_steps_that_run_at_once_share_batches_and_each_acts_once(backend: Backend) {
        let app = Arc::new(api_node_without_workers(backend).await);
        let ctx = app.state.job_context();
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let account = account_of(&app, group).await;

        // Thirty widget sessions at once: each gets its own visitor, one pending conversation in
        // line with one open thread, and its first message once.
        let mut opening = JoinSet::new();
        for n in 0..30 {
            let app = app.clone();
            opening.spawn(async move {
                let reply = app.widget_session(json!({ "initialMessage": format!("hello {n}") })).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
                assert!(reply.body["queuePosition"].as_u64().unwrap() >= 1);
                (reply.body["conversationId"].as_i64().unwrap(), n)
            });
        }
        let opened: Vec<(i64, i32)> = opening.join_all().await;
        let ids: BTreeSet<i64> = opened.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), 30, "thirty distinct conversations");
        let now = world(app.db()).await;
        for (id, n) in &opened {
            let c = now.conversation(*id);
            assert_eq!(c.status, ConversationStatus::Pending);
            assert!(c.queued_at.is_some(), "in line at once");
            let open: Vec<_> = now.threads.iter().filter(|t| t.conversation_id == *id).collect();
            assert_eq!(open.len(), 1);
            assert_eq!(c.active_thread_id, Some(open[0].id));
            assert_eq!(now.events_of(*id, &format!("hello {n}")), 1);
        }
        let queue = app.queue(&admin).await;
        let waiting: Vec<i64> = queue["groups"].as_array().unwrap().iter()
            .filter(|g| g["groupId"] == group)
            .flat_map(|g| g["waiting"].as_array().unwrap().iter().map(|c| c["conversationId"].as_i64().unwrap()))
            .collect();
        // Serving order: queue time, then id (batches on several connections may interleave).
        let fifo: Vec<i64> = now.line_order().into_iter().filter(|id| ids.contains(id)).collect();
        assert_eq!(waiting, fifo, "the line holds every session once, in serving order");

        // Each enqueued twice at once (one key each): one "queued" event per conversation.
        let mut enqueues = JoinSet::new();
        for id in ids.iter().copied() {
            for _ in 0..2 {
                let ctx = ctx.clone();
                enqueues.spawn(async move {
                    EnqueueConversation { conversation_id: id, key: format!("once-{id}"), entered_at_position: None }.run(&ctx).await.unwrap()
                });
            }
        }
        enqueues.join_all().await;
        let now = world(app.db()).await;
        for id in &ids {
            assert_eq!(now.events_of(*id, "Queued at position"), 1, "conversation {id}");
        }

        // Two agents take twenty of them in one go; each gets ten, in line order.
        let (first_agent, _) = app.online_agent(&admin, group, 10).await;
        let (second_agent, _) = app.online_agent(&admin, group, 10).await;
        AssignAgent::new(account, group).run(&ctx).await.unwrap();
        let now = world(app.db()).await;
        now.assert_consistent();
        let active = now.with_status(ConversationStatus::Active);
        assert_eq!(active, fifo[..20].iter().copied().collect(), "the head of the line");
        assert_eq!(now.agent(first_agent).active_chats, 10);
        assert_eq!(now.agent(second_agent).active_chats, 10);
        for id in &active {
            assert_eq!(now.events_of(*id, "Assigned to"), 1);
        }

        // Every active chat closed three times at once, plus a waiting one: each closes once,
        // and each agent gets exactly its ten slots back.
        let mut closes = JoinSet::new();
        for id in active.iter().copied().chain([fifo[25]]) {
            for _ in 0..3 {
                let ctx = ctx.clone();
                closes.spawn(async move {
                    CloseConversation { conversation_id: id, closed_by: ClosedBy::Agent, reason: "resolved".into(), intent: None }
                        .run(&ctx)
                        .await
                        .unwrap()
                });
            }
        }
        closes.join_all().await;
        let now = world(app.db()).await;
        now.assert_consistent();
        assert_eq!(now.agent(first_agent).active_chats, 0);
        assert_eq!(now.agent(second_agent).active_chats, 0);
        for id in active.iter().chain([&fifo[25]]) {
            assert_eq!(now.conversation(*id).status, ConversationStatus::Resolved);
            assert_eq!(now.events_of(*id, "Closed by the agent: resolved"), 1, "conversation {id}");
            assert!(now.threads.iter().filter(|t| t.conversation_id == *id).all(|t| t.status == ThreadStatus::Closed));
        }
        assert!(now.assignments.iter().all(|a| a.released_at.is_some()), "every assignment ended");
    }
}

/// A conversation locked for a change (a claim or a close holds it) still takes the rows that
/// refer to it: the lock is `FOR NO KEY UPDATE`, which the key-share lock of an insert with a
/// foreign key does not wait for. Under `FOR UPDATE` a visitor's message would wait for the
/// change to end, and an enqueue batch writing events deadlocked with the assigner's claims.
/// PostgreSQL only: SQLite's write transactions run one at a time anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_locked_for_a_change_still_takes_new_messages() {
    let app = api_node_without_workers(Backend::Distributed).await;
    let (conversation, visitor) = app.visitor(json!({})).await;
    let txn = sea_orm::TransactionTrait::begin(app.db()).await.unwrap();
    let locked = jobs::conversation::lock_conversation(&txn, conversation)
        .await
        .unwrap();
    assert_eq!(locked.map(|c| c.id), Some(conversation));

    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        app.try_visitor_says(&visitor, json!({ "content": "still there?" })),
    )
    .await
    .expect("the message waited for the lock");
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    txn.rollback().await.unwrap();
    let stored = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation))
        .filter(events::Column::Content.eq("still there?"))
        .count(app.db())
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

both_backends! {
    async fn a_session_never_opens_in_a_deleted_group_and_a_chat_left_there_moves_to_the_default(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let default = app.default_group(&admin).await;
        let sales = app.create_group(&admin, json!({ "name": "Sales" })).await["id"].as_i64().unwrap();
        // A first session: its place (account, Sales) is now remembered for a moment.
        let (stranded, _) = app.visitor(json!({ "groupId": sales, "initialMessage": "prices?" })).await;
        // The group is deleted meanwhile, as a delete whose check ran before that session
        // committed would leave it.
        groups::Entity::update_many()
            .col_expr(groups::Column::DeletedAt, sea_orm::sea_query::Expr::value(Some(Utc::now())))
            .filter(groups::Column::Id.eq(sales))
            .exec(app.db())
            .await
            .unwrap();
        let refused = app.widget_session(json!({ "groupId": sales, "initialMessage": "hello?" })).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{:?}", refused.body);
        assert_eq!(
            conversations::Entity::find().filter(conversations::Column::GroupId.eq(sales)).count(app.db()).await.unwrap(),
            1,
            "no session opened in the deleted group"
        );

        // The reconciler moves the chat that slipped in to the default group, and says so.
        let (agent, _) = app.online_agent(&admin, default, 2).await;
        let repairs = reconcile(&app.state.job_context()).await.expect("reconcile");
        assert_eq!(repairs.conversations_rehomed, 1, "{repairs:?}");
        let moved = app.conversation_becomes(&admin, stranded, "active").await;
        assert_eq!(moved["groupId"], default);
        assert_eq!(moved["assignedAgentId"], agent);
        let notes = events::Entity::find()
            .filter(events::Column::ConversationId.eq(stranded))
            .filter(events::Column::Kind.eq(EventKind::System))
            .all(app.db())
            .await
            .unwrap();
        assert!(
            notes.iter().any(|e| e.content == "Moved to General: its group Sales was deleted"),
            "{:?}",
            notes.iter().map(|e| &e.content).collect::<Vec<_>>()
        );
        // A second pass finds nothing left to move.
        let again = reconcile(&app.state.job_context()).await.expect("reconcile");
        assert_eq!(again.conversations_rehomed, 0);
        world(app.db()).await.assert_consistent();
    }
}

both_backends! {
    async fn deleting_a_group_while_sessions_open_in_it_never_strands_a_chat(backend: Backend) {
        let app = Arc::new(spawn_app(backend).await);
        let admin = app.admin_token().await;
        for round in 0..5 {
            let group = app.create_group(&admin, json!({ "name": format!("Race {round}") })).await["id"].as_i64().unwrap();
            let sessions: Vec<_> = (0..20)
                .map(|i| {
                    let app = app.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(i * 5)).await;
                        app.widget_session(json!({ "groupId": group })).await.status
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(40)).await;
            let deleted = app.try_delete_group(&admin, group).await.status;
            for session in sessions {
                let status = session.await.unwrap();
                assert!(status == StatusCode::CREATED || status == StatusCode::NOT_FOUND, "{status}");
            }
            let live = conversations::Entity::find()
                .filter(conversations::Column::GroupId.eq(group))
                .filter(conversations::Column::Status.is_in([ConversationStatus::Pending, ConversationStatus::Active]))
                .count(app.db())
                .await
                .unwrap();
            let moved = events::Entity::find()
                .filter(events::Column::Content.like("Moved to %"))
                .count(app.db())
                .await
                .unwrap();
            assert_eq!(moved, 0, "round {round}: the reconciler had to move a chat out of a deleted group");
            match deleted {
                StatusCode::NO_CONTENT => assert_eq!(live, 0, "round {round}: a chat opened in the deleted group"),
                StatusCode::CONFLICT => assert!(live > 0),
                other => panic!("round {round}: delete answered {other}"),
            }
        }
    }
}
