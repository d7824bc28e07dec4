//! What an outage of the job storage cannot take: acknowledged requests (intents), drops whose
//! presence job is lost, and clients that missed pushes (`sync`).

use std::time::Duration;

use chrono::Utc;
use entity::{agents, intents};
use jobs::{Job, close_conversation::CloseConversation, intent::Intended};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set, sea_query::Expr,
};
use serde_json::json;
use switchboard::config::Command;

use crate::{both_backends, helpers::*};

/// A chat of `agent`'s, active; returns its id.
async fn active_chat(app: &TestApp, admin: &str) -> i64 {
    let (id, _) = app.visitor(json!({ "initialMessage": "hello" })).await;
    app.conversation_becomes(admin, id, "active").await;
    id
}

/// An outstanding close intent of `conversation`, as an acknowledged request leaves it, due long
/// from now (so no sweep resubmits it during the test).
async fn close_intent(app: &TestApp, conversation: i64) -> i64 {
    let job = CloseConversation {
        conversation_id: conversation,
        closed_by: entity::enums::ClosedBy::Agent,
        reason: "resolved".into(),
        intent: None,
    };
    let account = entity::conversations::Entity::find_by_id(conversation)
        .one(app.db())
        .await
        .unwrap()
        .unwrap()
        .account_id;
    intents::ActiveModel {
        account_id: Set(account),
        conversation_id: Set(Some(conversation)),
        queue: Set(CloseConversation::QUEUE.into()),
        job: Set(serde_json::to_value(&job).unwrap()),
        attempts: Set(0),
        created_at: Set(Utc::now()),
        due_at: Set(Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    }
    .insert(app.db())
    .await
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_acknowledged_and_then_lost_with_redis_still_takes_effect() {
    let storage = Storage::new(Backend::Distributed).await;
    switchboard::startup::prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrate");
    let api = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let worker = spawn_with(storage.clone(), Command::Work, |_| {}).await;
    let admin = api.admin_token().await;
    let group = api.default_group(&admin).await;
    let (_, agent) = api.online_agent(&admin, group, 4).await;
    let id = active_chat(&api, &admin).await;

    // Nobody works while the close is accepted, and then Redis loses every task it held.
    worker.stop().await;
    api.close_conversation(&agent, id).await;
    let outstanding = || {
        intents::Entity::find()
            .filter(intents::Column::ConversationId.eq(id))
            .count(api.db())
    };
    assert_eq!(
        outstanding().await.unwrap(),
        1,
        "the acknowledged close left its intent"
    );
    let mut redis = redis::Client::open(storage.settings().redis_url.unwrap())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", storage.settings().redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the close job was in Redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!(
            "{}:close-conversation*",
            storage.settings().redis_prefix
        ))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, Vec::<String>::new(), "Redis lost the close job");

    // A worker comes back: its sweep finds the intent due and submits the close again.
    let _worker = spawn_with(storage.clone(), Command::Work, |_| {}).await;
    let closed = eventually(
        Duration::from_secs(30),
        "the lost close to take effect",
        || async {
            let reply = api.try_conversation(&admin, id).await;
            (reply.body["status"] == "resolved").then_some(reply.body)
        },
    )
    .await;
    assert!(closed["assignedAgentId"].is_number());
    assert_eq!(
        outstanding().await.unwrap(),
        0,
        "the close consumed its intent"
    );
    let me = api.me(&agent).await;
    assert_eq!(me["activeChats"], 0, "the slot came back");
}

both_backends! {
    async fn a_close_acts_once_per_intent_and_a_reopen_drops_the_outstanding_ones(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (_, agent) = app.online_agent(&admin, group, 4).await;
        let id = active_chat(&app, &admin).await;
        let ctx = app.state.job_context();
        let job = |intent: i64| {
            CloseConversation {
                conversation_id: id,
                closed_by: entity::enums::ClosedBy::Agent,
                reason: "resolved".into(),
                intent: None,
            }
            .with_intent(intent)
        };

        let first = close_intent(&app, id).await;
        assert_eq!(job(first).run(&ctx).await.unwrap(), "resolved");
        assert_eq!(job(first).run(&ctx).await.unwrap(), "already closed", "delivered twice, acts once");
        assert_eq!(
            intents::Entity::find_by_id(first).one(app.db()).await.unwrap(),
            None,
            "consumed with the close"
        );

        // A second close asked for before a reopen must not land after it.
        let second = close_intent(&app, id).await;
        app.reopen(&agent, id).await;
        assert_eq!(intents::Entity::find_by_id(second).one(app.db()).await.unwrap(), None);
        assert_eq!(job(second).run(&ctx).await.unwrap(), "already closed");
        assert_eq!(job(first).run(&ctx).await.unwrap(), "already closed");
        let now = app.conversation(&admin, id).await;
        assert!(
            ["pending", "active"].contains(&now["status"].as_str().unwrap()),
            "still open after stale closes: {now}"
        );
    }
}

both_backends! {
    async fn an_agent_whose_presence_job_was_lost_goes_offline_and_its_chats_back_in_line(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (agent_id, _) = app.online_agent(&admin, group, 4).await;
        let id = active_chat(&app, &admin).await;
        // Its last socket dropped long ago (past any grace), nothing vouched for it since, and
        // the presence job never ran.
        let dropped = Utc::now() - chrono::Duration::hours(1);
        agents::Entity::update_many()
            .col_expr(agents::Column::ConnectedAt, Expr::value(dropped - chrono::Duration::minutes(5)))
            .col_expr(agents::Column::DisconnectedAt, Expr::value(dropped))
            .col_expr(agents::Column::LastSeenAt, Expr::value(dropped))
            .filter(agents::Column::Id.eq(agent_id))
            .exec(app.db())
            .await
            .unwrap();
        // The sweep (every second here) runs this too: whichever runs first takes it offline.
        jobs::reconcile::recover(&app.state.job_context()).await.unwrap();
        let agent = agents::Entity::find_by_id(agent_id).one(app.db()).await.unwrap().unwrap();
        assert_eq!(agent.status, entity::enums::AgentStatus::Offline);
        assert!(!agent.accepting_chats);
        app.conversation_becomes(&admin, id, "pending").await;
        let again = jobs::reconcile::recover(&app.state.job_context()).await.unwrap();
        assert_eq!(again.drops, 0, "an offline agent is not taken offline again");
    }
}

both_backends! {
    async fn sync_gives_an_agent_its_chats_and_lines_and_a_visitor_its_conversation(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (agent_id, agent) = app.online_agent(&admin, group, 1).await;
        let (id, token) = app.visitor(json!({ "initialMessage": "first" })).await;
        app.conversation_becomes(&admin, id, "active").await;
        let (waiting, _) = app.visitor(json!({})).await;

        let socket = app.agent_socket(&agent).await;
        let data = socket.sync(json!({})).await;
        assert_eq!(data["agent"]["id"], agent_id);
        let held: Vec<i64> = data["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
        assert_eq!(held, [id]);
        assert_eq!(data["conversations"][0]["status"], "active");
        let line = &data["queue"]["groups"][0];
        assert_eq!(line["groupId"], group);
        assert_eq!(line["waitingCount"], 1);
        assert_eq!(line["waiting"][0]["conversationId"], waiting);
        assert_eq!(socket.refused("sync", json!({ "extra": 1 })).await, "validation_failed");

        let visitor = app.visitor_socket(&token).await;
        let data = visitor.sync(json!({})).await;
        assert_eq!(data["conversationId"], id);
        assert_eq!(data["status"], "active");
        assert_eq!(data["agent"]["name"], "A agent");
        let events = data["events"].as_array().unwrap();
        assert_eq!(events[0]["content"], "first");
        let last = events.last().unwrap()["id"].as_i64().unwrap();
        let later = visitor.sync(json!({ "after": last })).await;
        assert_eq!(later["events"], json!([]));
        socket.disconnect().await;
        visitor.disconnect().await;
    }
}

both_backends! {
    async fn a_webhook_whose_fan_out_was_lost_is_delivered_once_from_the_outbox(backend: Backend) {
        use crate::{notify::{app_with, finished, webhook}, receivers::Receiver};
        let receiver = Receiver::start(crate::notify::SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/in"), json!(["conversation.closed", "message.created"])).await;
        let (conversation, visitor) = app.visitor(json!({ "name": "Olga" })).await;

        // The ordinary path: the message's outbox row becomes its delivery and goes.
        app.visitor_says(&visitor, "hi").await;
        finished(&app, &admin, hook, 1).await;
        assert_eq!(entity::outbox::Entity::find().count(app.db()).await.unwrap(), 0, "the fan-out took its row");

        // A close whose process loses its fan-out after the commit (it died): a notifier that only
        // logs stands for it. The outcome's row stays in the outbox and nothing is delivered.
        let lost = jobs::JobContext {
            notifier: std::sync::Arc::new(jobs::notify::LogNotifier),
            ..app.state.job_context()
        };
        let close = CloseConversation {
            conversation_id: conversation,
            closed_by: entity::enums::ClosedBy::System,
            reason: "test".into(),
            intent: None,
        };
        close.run(&lost).await.expect("the close ran");
        let staged = entity::outbox::Entity::find().all(app.db()).await.unwrap();
        assert_eq!(staged.len(), 1, "{staged:?}");
        assert_eq!(staged[0].outcome["kind"], "conversationClosed");
        let closed_hits = || receiver.hits_on("/in").into_iter().filter(|h| h.body["kind"] == "conversation.closed").count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(closed_hits(), 0);

        // Rows younger than the threshold are left to their own process's fan-out.
        assert_eq!(jobs::fanout::left_behind(&lost).await.unwrap(), 0);
        // Once old enough, the sweep of any node records its delivery: once, however many run.
        entity::outbox::Entity::update_many()
            .col_expr(entity::outbox::Column::CreatedAt, Expr::value(Utc::now() - chrono::Duration::minutes(1)))
            .exec(app.db())
            .await
            .unwrap();
        let (a, b) = tokio::join!(jobs::fanout::left_behind(&lost), jobs::fanout::left_behind(&lost));
        assert_eq!(a.unwrap() + b.unwrap(), 1);
        let rows = finished(&app, &admin, hook, 2).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        eventually(Duration::from_secs(10), "the closed webhook", || async { (closed_hits() == 1).then_some(()) }).await;
        let hit = receiver.hits_on("/in").into_iter().find(|h| h.body["kind"] == "conversation.closed").unwrap();
        assert_eq!(hit.body["data"]["conversationId"], conversation);
        assert_eq!(hit.body["data"]["closedBy"], "system");
        assert_eq!(entity::outbox::Entity::find().count(app.db()).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(closed_hits(), 1, "delivered once");
    }
}

both_backends! {
    async fn outcomes_left_in_the_outbox_are_delivered_before_later_ones_of_their_conversation(backend: Backend) {
        use crate::{notify::{app_with, finished, webhook}, receivers::Receiver};
        use jobs::notify::Outcome;
        let receiver = Receiver::start(crate::notify::SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let kinds = json!(["conversation.reassigned", "conversation.assigned", "conversation.closed"]);
        let hook = webhook(&app, &admin, &receiver.url("/in"), kinds).await;
        let (conversation, _) = app.visitor(json!({ "name": "Ida" })).await;
        let group = app.default_group(&admin).await;
        let (agent, _) = app.agent_in_group(&admin, group, 2).await;
        let unassigned = Outcome::ConversationUnassigned {
            account_id: 1, conversation_id: conversation, group_id: group, agent_id: agent, reason: jobs::conversation::ReleaseReason::Transferred,
        };
        let assigned = Outcome::ConversationAssigned {
            account_id: 1, conversation_id: conversation, group_id: group, visitor_id: 1, agent_id: agent,
            agent_name: "A".into(), agent_avatar_url: None, reason: "picked up".into(),
        };
        let closed = Outcome::ConversationClosed {
            account_id: 1, conversation_id: conversation, visitor_id: 1, agent_id: Some(agent),
            closed_by: entity::enums::ClosedBy::Agent, reason: "resolved".into(),
        };
        // One change's two outcomes, staged in the same instant by a process that then died.
        let lost = app.state.outbox.stage(app.db(), [unassigned, assigned]).await.unwrap();
        drop(lost);
        // A later change of the same conversation, told as usual: its fan-out records the two
        // left behind first, in the order they were staged.
        let later = app.state.outbox.stage(app.db(), [closed]).await.unwrap();
        later.tell(&*app.state.notifier);
        let rows = finished(&app, &admin, hook, 3).await;
        let mut kinds: Vec<(i64, String)> = rows
            .iter()
            .map(|d| (d["id"].as_i64().unwrap(), d["kind"].as_str().unwrap().to_owned()))
            .collect();
        kinds.sort();
        let kinds: Vec<&str> = kinds.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, ["conversation.reassigned", "conversation.assigned", "conversation.closed"]);
        assert_eq!(entity::outbox::Entity::find().count(app.db()).await.unwrap(), 0);
        let heard: Vec<String> = receiver.hits_on("/in").iter().map(|h| h.body["kind"].as_str().unwrap().to_owned()).collect();
        assert_eq!(heard, ["conversation.reassigned", "conversation.assigned", "conversation.closed"]);
    }
}
