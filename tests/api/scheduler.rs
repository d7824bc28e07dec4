//! The scheduler, with time driven through configuration: groups with timers of a few seconds and
//! a sweep every second (see `Storage::settings`). Reassignment after silence (never back to the
//! silent agent), typing pausing the clock, the hold after `maxReassignments`, idle close, the
//! first-response SLA raised once, the queue-wait offer, and every expiry acting once.

use std::time::Duration;

use entity::{conversations, events, threads};
use jobs::{
    Job,
    timers::{ExpireTimer, Timer},
};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

/// Sets the default group's timers; returns its id.
async fn timers(app: &TestApp, admin: &str, settings: Value) -> i64 {
    let group = app.default_group(admin).await;
    app.update_group(admin, group, settings).await;
    group
}

async fn stored(app: &TestApp, id: i64) -> conversations::Model {
    conversations::Entity::find_by_id(id)
        .one(app.db())
        .await
        .unwrap()
        .expect("the conversation")
}

/// Every event text of a conversation, across its threads, oldest first.
async fn history(app: &TestApp, _admin: &str, id: i64) -> Vec<String> {
    events::Entity::find()
        .filter(events::Column::ConversationId.eq(id))
        .order_by_asc(events::Column::Id)
        .all(app.db())
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.content)
        .collect()
}

/// Waits until the conversation is active with an agent other than `not`; returns that agent.
async fn assigned_to_other(app: &TestApp, admin: &str, id: i64, not: Option<i64>) -> i64 {
    eventually(
        Duration::from_secs(20),
        "the conversation to be assigned",
        || async {
            let view = app.try_conversation(admin, id).await.body;
            let agent = view["assignedAgentId"].as_i64();
            agent.filter(|agent| view["status"] == "active" && Some(*agent) != not)
        },
    )
    .await
}

both_backends! {
    async fn an_unanswered_chat_moves_to_another_agent_and_never_back(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = timers(&app, &admin, json!({ "agentResponseTimeoutSeconds": 2, "maxReassignments": 3 })).await;
        let (first_agent, _) = app.online_agent(&admin, group, 1).await;
        let (id, _) = app.visitor(json!({ "initialMessage": "anyone there?" })).await;
        let silent = assigned_to_other(&app, &admin, id, None).await;
        assert_eq!(silent, first_agent);
        // A second agent comes online only now, so the first one certainly had the chat.
        let (second_agent, _) = app.online_agent(&admin, group, 1).await;

        // Nobody answers for 2 s: the chat goes to the other agent.
        let next = assigned_to_other(&app, &admin, id, Some(silent)).await;
        assert_eq!(next, second_agent);
        let texts = history(&app, &admin, id).await;
        assert_eq!(
            texts.iter().filter(|t| *t == "Reassigned: no agent reply in 2 s").count(),
            1,
            "{texts:?}"
        );
        assert_eq!(stored(&app, id).await.reassignment_count, 1);

        // The second agent is silent too: back in line, and the first agent, free and online,
        // is not offered it again.
        let pending = app.conversation_becomes(&admin, id, "pending").await;
        assert_eq!(pending["assignedAgentId"], Value::Null);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let view = app.conversation(&admin, id).await;
        assert_eq!(view["status"], "pending", "the silent agents are excluded: {view}");
        assert_eq!(stored(&app, id).await.reassignment_count, 2);
        let me = app.agents(&admin).await;
        assert!(
            me["items"].as_array().unwrap().iter().all(|a| a["activeChats"] == 0),
            "capacity came back: {me}"
        );
    }
}

both_backends! {
    async fn an_answered_chat_is_not_reassigned_and_typing_pauses_the_clock(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = timers(&app, &admin, json!({ "agentResponseTimeoutSeconds": 2 })).await;
        let (agent_id, token) = app.online_agent(&admin, group, 2).await;
        let agent = app.agent_socket(&token).await;
        let (id, session) = app.visitor(json!({ "initialMessage": "hello" })).await;
        assert_eq!(assigned_to_other(&app, &admin, id, None).await, agent_id);

        // The agent keeps typing for twice the timeout without sending: the clock is paused.
        for _ in 0..8 {
            agent.set_typing(json!({ "conversationId": id, "typing": true })).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let view = stored(&app, id).await;
        assert_eq!(view.assigned_agent_id, Some(agent_id), "typing kept the chat");
        assert!(view.agent_typing_at.is_some());

        // It answers; the visitor writes again and is answered in time: still the same agent.
        agent.send_message(json!({ "conversationId": id, "content": "Hi! Looking." })).await;
        app.visitor_says(&session, "thanks").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        agent.send_message(json!({ "conversationId": id, "content": "Here you go." })).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let view = stored(&app, id).await;
        assert_eq!((view.status, view.assigned_agent_id), (entity::enums::ConversationStatus::Active, Some(agent_id)));
        assert_eq!(view.reassignment_count, 0);

        // Typing stops and the visitor's next message goes unanswered: reassigned.
        app.visitor_says(&session, "hello??").await;
        app.conversation_becomes(&admin, id, "pending").await;
        assert!(history(&app, &admin, id).await.contains(&"Reassigned: no agent reply in 2 s".to_owned()));
        agent.disconnect().await;
    }
}

both_backends! {
    async fn after_max_reassignments_the_chat_is_held_for_a_person_and_supervisors_hear_once(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = timers(&app, &admin, json!({ "agentResponseTimeoutSeconds": 2, "maxReassignments": 0, "firstResponseSlaSeconds": 3600 })).await;
        let mut supervisor = app.agent_socket(&admin).await;
        let (silent, _) = app.online_agent(&admin, group, 1).await;
        let (id, _) = app.visitor(json!({ "initialMessage": "help" })).await;
        assert_eq!(assigned_to_other(&app, &admin, id, None).await, silent);

        let breach = supervisor.next_where("sla:breached", |b| b["conversationId"] == id).await;
        assert_eq!(breach["sla"], "max_reassignments");
        assert_eq!(breach["limit"], 0);
        assert_eq!(breach["agentId"], silent);
        let held = stored(&app, id).await;
        assert_eq!(held.status, entity::enums::ConversationStatus::Pending);
        assert!(held.routing_held_at.is_some());
        let texts = history(&app, &admin, id).await;
        assert!(
            texts.iter().any(|t| t.starts_with("Held at the head of the line for a person")),
            "{texts:?}"
        );

        // A free, eligible agent is not given it automatically, but is given the chats behind it...
        let (helper, helper_token) = app.online_agent(&admin, group, 2).await;
        let (behind, _) = app.visitor(json!({})).await;
        assert_eq!(assigned_to_other(&app, &admin, behind, None).await, helper);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(app.conversation(&admin, id).await["status"], "pending");
        supervisor.none("sla:breached", Duration::from_millis(500)).await;
        // ...but can take it by hand, which lifts the hold.
        app.pickup(&helper_token, id).await;
        let view = stored(&app, id).await;
        assert_eq!(view.assigned_agent_id, Some(helper));
        assert!(view.routing_held_at.is_none());
        supervisor.disconnect().await;
    }
}

both_backends! {
    async fn an_idle_visitor_is_closed_by_the_system(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = timers(&app, &admin, json!({ "visitorIdleTimeoutSeconds": 3 })).await;
        let (agent_id, token) = app.online_agent(&admin, group, 1).await;
        let (id, session) = app.visitor(json!({})).await;
        assert_eq!(assigned_to_other(&app, &admin, id, None).await, agent_id);
        let thread = app.conversation(&admin, id).await["activeThreadId"].as_i64().unwrap();
        app.agent_says(&token, thread, "How can I help?").await;

        let closed = app.conversation_becomes(&admin, id, "closed").await;
        assert_eq!(closed["assignedAgentId"], agent_id, "the record keeps who had it");
        let last = threads::Entity::find_by_id(thread).one(app.db()).await.unwrap().unwrap();
        assert_eq!(
            (last.closed_by, last.closed_reason.as_deref()),
            (Some(entity::enums::ClosedBy::System), Some("visitor_idle")),
            "{last:?}"
        );
        assert_eq!(app.me(&token).await["activeChats"], 0, "capacity came back");
        let seen = app.widget_conversation(&session).await;
        assert_eq!(seen["status"], "closed");
        let texts = history(&app, &admin, id).await;
        assert_eq!(texts.iter().filter(|t| *t == "Closed by the system: visitor_idle").count(), 1, "{texts:?}");
    }
}

both_backends! {
    async fn a_first_response_breach_is_raised_once(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        timers(&app, &admin, json!({ "firstResponseSlaSeconds": 2 })).await;
        let mut supervisor = app.agent_socket(&admin).await;
        let (id, _) = app.visitor(json!({ "initialMessage": "hi" })).await;

        let breach = supervisor.next_where("sla:breached", |b| b["conversationId"] == id).await;
        assert_eq!(breach["sla"], "first_response");
        assert_eq!(breach["limit"], 2);
        assert!(breach["actual"].as_i64().unwrap() >= 2);
        // Sweeps keep ticking every second; the breach is not raised again.
        supervisor.none("sla:breached", Duration::from_secs(3)).await;
        // Nor by a redelivered job.
        let again = ExpireTimer { conversation_id: id, timer: Timer::FirstResponse }.run(&app.state.job_context()).await.unwrap();
        assert_eq!(again, "not expired (any more)");
        let texts = history(&app, &admin, id).await;
        assert_eq!(
            texts.iter().filter(|t| *t == "First-response SLA breached: no agent reply within 2 s").count(),
            1,
            "{texts:?}"
        );
        assert!(stored(&app, id).await.first_response_breached_at.is_some());
        supervisor.disconnect().await;
    }
}

both_backends! {
    async fn a_long_wait_is_told_once_and_the_visitor_can_leave_an_email(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        timers(&app, &admin, json!({ "maxQueueWaitSeconds": 2 })).await;
        let (id, session) = app.visitor(json!({})).await;
        let mut visitor = app.visitor_socket(&session).await;

        let overdue = visitor.next("queue:overdue").await;
        assert_eq!(overdue["conversationId"], id);
        assert_eq!(overdue["canLeaveEmail"], true);
        assert!(overdue["waitedSeconds"].as_i64().unwrap() >= 2);
        visitor.none("queue:overdue", Duration::from_secs(2)).await;

        let left = app.leave_contact(&session, json!({ "email": "vera@example.com", "name": "Vera" })).await;
        assert_eq!(left["email"], "vera@example.com");
        for bad in [json!({ "email": "not an address" }), json!({}), json!({ "email": "a@b.co", "extra": 1 })] {
            let refused = app.request(Method::PUT, "/v1/widget/contact", Some(&session), Some(bad.clone())).await;
            assert!(refused.status.is_client_error(), "{bad}: {:?}", refused.body);
        }
        let refused = app.request(Method::PUT, "/v1/widget/contact", Some("not-a-session"), Some(json!({ "email": "x@example.com" }))).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let view = app.conversation(&admin, id).await;
        assert_eq!(view["status"], "pending", "it still waits");
        let texts = history(&app, &admin, id).await;
        assert_eq!(texts.iter().filter(|t| t.starts_with("Waited ") && t.contains("leave an e-mail")).count(), 1, "{texts:?}");
        visitor.disconnect().await;
    }
}

both_backends! {
    async fn an_expired_timer_run_twice_acts_once(backend: Backend) {
        // No workers here: the test runs the jobs by hand, twice each.
        let storage = Storage::new(backend).await;
        switchboard::startup::prepare_database(&storage.settings(), switchboard::config::Command::Migrate)
            .await
            .expect("migrate");
        let app = spawn_with(storage, switchboard::config::Command::Serve, |_| {}).await;
        let admin = app.admin_token().await;
        let group = timers(&app, &admin, json!({ "agentResponseTimeoutSeconds": 2, "visitorIdleTimeoutSeconds": 2 })).await;
        let ctx = app.state.job_context();
        let (agent_id, _) = app.online_agent(&admin, group, 2).await;
        let (first, _) = app.visitor(json!({ "initialMessage": "one" })).await;
        let (second, _) = app.visitor(json!({})).await;
        for id in [first, second] {
            app.assign(&admin, id, agent_id).await;
        }
        tokio::time::sleep(Duration::from_millis(2_300)).await;

        let reassign = ExpireTimer { conversation_id: first, timer: Timer::AgentResponse };
        let done = reassign.clone().run(&ctx).await.unwrap();
        assert!(done.starts_with("reassigned"), "{done}");
        assert_eq!(reassign.run(&ctx).await.unwrap(), "not expired (any more)");
        assert_eq!(stored(&app, first).await.reassignment_count, 1);

        let idle = ExpireTimer { conversation_id: second, timer: Timer::VisitorIdle };
        assert!(idle.clone().run(&ctx).await.unwrap().starts_with("closed"));
        assert_eq!(idle.run(&ctx).await.unwrap(), "not expired (any more)");
        let texts = history(&app, &admin, second).await;
        assert_eq!(texts.iter().filter(|t| t.starts_with("Closed by the system")).count(), 1, "{texts:?}");
        assert_eq!(app.agents(&admin).await["items"].as_array().unwrap().iter().find(|a| a["id"] == agent_id).unwrap()["activeChats"], 0);

        // The sweep finds nothing more to do.
        let swept = jobs::timers::sweep(&ctx).await.unwrap();
        assert_eq!(swept.expired.get(&Timer::AgentResponse), None, "{swept:?}");
        assert_eq!(swept.expired.get(&Timer::VisitorIdle), None, "{swept:?}");
    }
}

both_backends! {
    async fn a_waiting_chat_whose_visitor_left_is_closed_as_abandoned_and_one_still_there_waits_on(backend: Backend) {
        use sea_orm::sea_query::Expr;
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let (gone, _) = app.visitor(json!({ "initialMessage": "hello?" })).await;
        let (here, session) = app.visitor(json!({ "initialMessage": "hello?" })).await;
        // A third left an address and went: it asked to be answered later.
        let (reachable, _) = app.visitor(json!({ "email": "later@example.com", "initialMessage": "call me back" })).await;
        let socket = app.visitor_socket(&session).await;
        // Neither visitor was seen for half an hour (the idle timeout is 15 minutes)...
        let long_ago = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::minutes(30), 6);
        let (gone_visitor, here_visitor) = (stored(&app, gone).await.visitor_id, stored(&app, here).await.visitor_id);
        let reachable_visitor = stored(&app, reachable).await.visitor_id;
        entity::visitors::Entity::update_many()
            .col_expr(entity::visitors::Column::LastSeenAt, Expr::value(long_ago))
            .filter(entity::visitors::Column::Id.is_in([gone_visitor, here_visitor, reachable_visitor]))
            .exec(app.db())
            .await
            .unwrap();
        // ...but the one with a socket open is vouched for by its node's heartbeat.
        let db = app.db();
        let seen = |id| async move {
            entity::visitors::Entity::find_by_id(id).one(db).await.unwrap().unwrap().last_seen_at
        };
        eventually(Duration::from_secs(20), "the heartbeat", || async move {
            (seen(here_visitor).await > long_ago).then_some(())
        })
        .await;
        assert_eq!(seen(gone_visitor).await, long_ago);
        // All have waited half an hour.
        for id in [gone, here, reachable] {
            conversations::Entity::update_many()
                .col_expr(conversations::Column::QueuedAt, Expr::value(Some(long_ago)))
                .col_expr(conversations::Column::CreatedAt, Expr::value(long_ago))
                .col_expr(conversations::Column::LastVisitorActivityAt, Expr::value(Some(long_ago)))
                .filter(conversations::Column::Id.eq(id))
                .exec(app.db())
                .await
                .unwrap();
        }
        // The one whose socket is open is vouched for by its node; the other is closed.
        let closed = app.conversation_becomes(&admin, gone, "closed").await;
        assert!(closed["closedAt"].is_string());
        let texts = history(&app, &admin, gone).await;
        assert!(texts.iter().any(|t| t == "Closed by the system: abandoned"), "{texts:?}");
        let thread = threads::Entity::find()
            .filter(threads::Column::ConversationId.eq(gone))
            .one(app.db())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(thread.closed_reason.as_deref(), Some("abandoned"));
        // Sweeps tick every second: the one still there waits on.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(stored(&app, here).await.status, entity::enums::ConversationStatus::Pending);
        assert_eq!(stored(&app, reachable).await.status, entity::enums::ConversationStatus::Pending);
        socket.disconnect().await;
    }
}
