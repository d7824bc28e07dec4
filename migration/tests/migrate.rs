//! Runs the migrations up, down and up again on SQLite and PostgreSQL, checks
//! the column types each backend ends up with, and round-trips rows through the
//! `entity` ActiveModels to prove the entities match the schema.
//!
//! PostgreSQL is required: the admin URL defaults to
//! `postgres://postgres@127.0.0.1:5432/postgres` and can be overridden with
//! `SWITCHBOARD_TEST_DATABASE_URL`. A throwaway database `sb_migtest_<random>`
//! is created and dropped again.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use entity::enums::{
    AgentRole, AgentStatus, AuthorType, ConversationStatus, EventKind, Priority, RoutingStrategy,
    ThreadStatus,
};
use entity::{
    accounts, agent_groups, agents, assignments, conversation_tags, conversations, events, groups,
    tags, threads, visitors,
};
use migration::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Statement,
    prelude::{ColumnTrait, DateTimeUtc, Json},
};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const TABLES: [&str; 16] = [
    "accounts",
    "agent_groups",
    "agents",
    "assignments",
    "audit_log",
    "conversation_tags",
    "conversations",
    "deliveries",
    "events",
    "groups",
    "intents",
    "outbox",
    "tags",
    "threads",
    "visitors",
    "webhooks",
];

#[tokio::test]
async fn sqlite_up_down_up() -> Result<(), DbErr> {
    let db = Database::connect("sqlite::memory:").await?;
    up_down_up(&db).await?;
    check_sqlite_types(&db).await?;
    db.close().await
}

#[tokio::test]
async fn sqlite_entities_round_trip() -> Result<(), DbErr> {
    let db = Database::connect("sqlite::memory:").await?;
    Migrator::up(&db, None).await?;
    entities_round_trip(&db).await?;
    db.close().await
}

#[tokio::test]
async fn postgres_up_down_up_and_round_trip() {
    let admin_url = std::env::var("SWITCHBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    let mut options = ConnectOptions::new(admin_url.clone());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    let admin = match Database::connect(options).await {
        Ok(db) => db,
        Err(err) => panic!(
            "PostgreSQL is not reachable at {admin_url} ({err}). \
             Run ./scripts/test, which starts PostgreSQL, instead of plain cargo test."
        ),
    };

    let name = format!("sb_migtest_{:016x}", random_u64());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");

    let url = with_database(&admin_url, &name);
    // Run the body in its own task so the database is dropped even if it panics.
    let outcome = tokio::spawn(async move {
        let db = Database::connect(&url).await?;
        up_down_up(&db).await?;
        check_postgres_types(&db).await?;
        entities_round_trip(&db).await?;
        db.close().await
    })
    .await;

    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop test database");
    admin.close().await.expect("close admin connection");

    match outcome {
        Ok(result) => result.expect("postgres migration test"),
        Err(join_err) => std::panic::resume_unwind(join_err.into_panic()),
    }
}

async fn up_down_up(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await?;
    assert_eq!(user_tables(db).await?, TABLES, "after first up");
    assert!(Migrator::get_pending_migrations(db).await?.is_empty());

    Migrator::down(db, None).await?;
    assert!(user_tables(db).await?.is_empty(), "down left tables behind");
    assert_eq!(Migrator::get_applied_migrations(db).await?.len(), 0);

    Migrator::up(db, None).await?;
    assert_eq!(user_tables(db).await?, TABLES, "after second up");
    Ok(())
}

/// Application tables, sorted, excluding the migration bookkeeping table.
async fn user_tables(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> 'seaql_migrations' ORDER BY name"
        }
        _ => {
            "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = 'public' \
             AND tablename <> 'seaql_migrations' ORDER BY tablename"
        }
    };
    db.query_all_raw(Statement::from_string(backend, sql))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "name"))
        .collect()
}

async fn check_sqlite_types(db: &DatabaseConnection) -> Result<(), DbErr> {
    let sql = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        ))
        .await?
        .expect("events table")
        .try_get::<String>("", "sql")?;
    println!("sqlite events DDL: {sql}");
    assert!(sql.contains(r#""id" integer NOT NULL PRIMARY KEY AUTOINCREMENT"#));
    assert!(sql.contains(r#""metadata" jsonb_text NULL"#));
    assert!(sql.contains(r#""created_at" timestamp_with_timezone_text NOT NULL"#));
    Ok(())
}

async fn check_postgres_types(db: &DatabaseConnection) -> Result<(), DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT column_name::text AS column_name, data_type::text AS data_type, \
             is_identity::text AS is_identity \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'events' \
             AND column_name IN ('id', 'metadata', 'created_at') ORDER BY column_name",
        ))
        .await?;
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get("", "column_name")?,
                row.try_get("", "data_type")?,
                row.try_get("", "is_identity")?,
            ))
        })
        .collect::<Result<_, DbErr>>()?;
    println!("postgres events columns: {got:?}");
    let expected = [
        ("created_at", "timestamp with time zone", "NO"),
        ("id", "bigint", "YES"),
        ("metadata", "jsonb", "NO"),
    ];
    let got: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(got, expected);
    Ok(())
}

/// Inserts one row per main table through the ActiveModels, reads them back,
/// checks priority ordering, then deletes the account and expects every
/// dependent row to cascade away.
async fn entities_round_trip(db: &DatabaseConnection) -> Result<(), DbErr> {
    // Whole microseconds: PostgreSQL keeps microsecond precision only.
    let now = DateTimeUtc::from_timestamp(1_763_700_000, 123_456_000).expect("valid timestamp");

    let account = accounts::ActiveModel {
        name: Set("Acme".to_owned()),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    assert!(account.id > 0);

    let agent = agents::ActiveModel {
        account_id: Set(account.id),
        name: Set("Ada".to_owned()),
        email: Set("ada@example.com".to_owned()),
        password_hash: Set("$argon2id$placeholder".to_owned()),
        role: Set(AgentRole::Supervisor),
        status: Set(AgentStatus::Online),
        accepting_chats: Set(true),
        max_concurrent_chats: Set(6),
        active_chats: Set(0),
        avatar_url: Set(None),
        token_version: Set(0),
        last_seen_at: Set(Some(now)),
        last_assigned_at: Set(None),
        connected_at: Set(Some(now)),
        disconnected_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let read = agents::Entity::find_by_id(agent.id)
        .one(db)
        .await?
        .expect("agent row");
    assert_eq!(read, agent);
    assert_eq!(read.role, AgentRole::Supervisor);
    assert_eq!(read.last_seen_at, Some(now));
    assert_eq!(
        accounts::Entity::find_by_id(account.id).one(db).await?,
        Some(account.clone())
    );

    let group = groups::ActiveModel {
        account_id: Set(account.id),
        name: Set("Support".to_owned()),
        description: Set(None),
        routing_strategy: Set(RoutingStrategy::LeastLoaded),
        is_default: Set(true),
        agent_response_timeout_seconds: Set(120),
        visitor_idle_timeout_seconds: Set(900),
        first_response_sla_seconds: Set(60),
        max_reassignments: Set(3),
        max_queue_wait_seconds: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    agent_groups::ActiveModel {
        agent_id: Set(agent.id),
        group_id: Set(group.id),
        account_id: Set(account.id),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let agent_groups = agents::Entity::find_by_id(agent.id)
        .find_with_related(groups::Entity)
        .all(db)
        .await?;
    assert_eq!(agent_groups.len(), 1);
    assert_eq!(agent_groups[0].1, vec![group.clone()]);

    let visitor = visitors::ActiveModel {
        account_id: Set(account.id),
        name: Set(None),
        email: Set(None),
        phone: Set(None),
        user_agent: Set(Some("test".to_owned())),
        ip: Set(Some("127.0.0.1".to_owned())),
        referrer: Set(None),
        metadata: Set(r#"{"plan":"pro"}"#.parse::<Json>().expect("json")),
        session_token_hash: Set("0".repeat(64)),
        created_at: Set(now),
        last_seen_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;

    let conversation = |priority: Priority, queued_at: DateTimeUtc| conversations::ActiveModel {
        account_id: Set(account.id),
        visitor_id: Set(visitor.id),
        group_id: Set(group.id),
        assigned_agent_id: Set(None),
        status: Set(ConversationStatus::Pending),
        priority: Set(priority),
        active_thread_id: Set(None),
        queued_at: Set(Some(queued_at)),
        assigned_at: Set(None),
        first_response_at: Set(None),
        last_visitor_activity_at: Set(None),
        last_agent_activity_at: Set(None),
        reassignment_count: Set(0),
        notes: Set(None),
        resolved_at: Set(None),
        closed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    let low = conversation(Priority::Low, now).insert(db).await?;
    let read = conversations::Entity::find_by_id(low.id)
        .one(db)
        .await?
        .expect("conversation row");
    assert_eq!(read.priority, Priority::Low);
    assert_eq!(read, low);

    // Ascending priority is the queue order: high before normal before low.
    let later = DateTimeUtc::from_timestamp(1_763_700_100, 0).expect("valid timestamp");
    let high = conversation(Priority::High, later).insert(db).await?;
    let normal = conversation(Priority::Normal, later).insert(db).await?;
    let queue: Vec<Priority> = conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group.id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .order_by_asc(conversations::Column::Priority)
        .order_by_asc(conversations::Column::QueuedAt)
        .all(db)
        .await?
        .into_iter()
        .map(|c| c.priority)
        .collect();
    assert_eq!(queue, [Priority::High, Priority::Normal, Priority::Low]);

    // A fully populated conversation, so the cascade below crosses every foreign key.
    let mut active: conversations::ActiveModel = high.into();
    active.assigned_agent_id = Set(Some(agent.id));
    active.status = Set(ConversationStatus::Active);
    let high = active.update(db).await?;
    let thread = threads::ActiveModel {
        account_id: Set(account.id),
        conversation_id: Set(high.id),
        agent_id: Set(Some(agent.id)),
        status: Set(ThreadStatus::Active),
        closed_by: Set(None),
        closed_reason: Set(None),
        closed_at: Set(None),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let mut active: conversations::ActiveModel = high.into();
    active.active_thread_id = Set(Some(thread.id));
    active.update(db).await?;
    let event = events::ActiveModel {
        account_id: Set(account.id),
        conversation_id: Set(normal.id),
        thread_id: Set(thread.id),
        kind: Set(EventKind::Message),
        author_type: Set(AuthorType::Agent),
        agent_id: Set(Some(agent.id)),
        content: Set("hello".to_owned()),
        metadata: Set(None),
        client_message_id: Set(Some("c-1".to_owned())),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    assert_eq!(
        events::Entity::find_by_id(event.id).one(db).await?,
        Some(event)
    );
    assignments::ActiveModel {
        account_id: Set(account.id),
        conversation_id: Set(low.id),
        agent_id: Set(agent.id),
        reason: Set("routing".to_owned()),
        assigned_at: Set(now),
        released_at: Set(None),
        release_reason: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let tag = tags::ActiveModel {
        account_id: Set(account.id),
        name: Set("vip".to_owned()),
        color: Set(Some("#ff0000".to_owned())),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    conversation_tags::ActiveModel {
        conversation_id: Set(low.id),
        tag_id: Set(tag.id),
        account_id: Set(account.id),
        created_at: Set(now),
    }
    .insert(db)
    .await?;

    // Deleting the account removes everything it owns in one statement.
    accounts::Entity::delete_by_id(account.id).exec(db).await?;
    assert_eq!(agents::Entity::find().count(db).await?, 0);
    assert_eq!(agent_groups::Entity::find().count(db).await?, 0);
    assert_eq!(conversations::Entity::find().count(db).await?, 0);
    assert_eq!(conversation_tags::Entity::find().count(db).await?, 0);
    assert_eq!(threads::Entity::find().count(db).await?, 0);
    assert_eq!(events::Entity::find().count(db).await?, 0);
    assert_eq!(assignments::Entity::find().count(db).await?, 0);
    assert_eq!(visitors::Entity::find().count(db).await?, 0);
    Ok(())
}

/// Replaces the database name in a `postgres://…/<db>[?query]` URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{database}?{query}"),
        None => format!("{host_part}/{database}"),
    }
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
