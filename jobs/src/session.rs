//! A visitor starts a chat: visitor, conversation (pending, in line), its first thread and the
//! initial message, written for many sessions at once (see `batch`).

use std::collections::HashMap;

use chrono::Utc;
use entity::{
    accounts, conversations,
    enums::{AuthorType, ConversationStatus, EventKind, Priority, ThreadStatus},
    events, groups, threads, visitors,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr,
};
use serde_json::Value;

use crate::conversation::{by_id, queue_positions};

/// A session to open, as the widget asked for it (validated by the caller).
#[derive(Debug, Clone)]
pub struct Opening {
    /// The account; optional while the server hosts a single one.
    pub account_id: Option<i64>,
    /// The department; the account's default group when absent.
    pub group_id: Option<i64>,
    /// Place in line.
    pub priority: Priority,
    /// The visitor's first message, if any.
    pub initial_message: Option<String>,
    /// Visitor fields.
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub referrer: Option<String>,
    pub metadata: Value,
    /// The session token's hash (the token itself is never stored).
    pub session_token_hash: String,
}

/// A session that was opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The new visitor.
    pub visitor_id: i64,
    /// Its conversation, pending and in line.
    pub conversation: conversations::Model,
    /// The conversation's first thread.
    pub thread_id: i64,
    /// Its place in its group's line (1-based).
    pub position: u64,
}

/// Why a session could not be opened: nothing was written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    /// No such account.
    #[error("no such account")]
    NoAccount,
    /// No account was named and the server hosts several.
    #[error("accountId is required: this server hosts several accounts")]
    AccountRequired,
    /// No such live group in the account (or it has no default group).
    #[error("no such group")]
    NoGroup,
}

/// What a widget asked for: (account, group), either left to the server.
type Asked = (Option<i64>, Option<i64>);
type Place = Result<(i64, i64), OpenRefused>;

/// Where sessions go, (account, group) by what was asked, remembered for [`PLACE_TTL`]: every
/// session of a busy site asks the same, and a group deleted or an account added meanwhile is
/// seen that much later, as if the session had come a moment earlier. Refusals are not kept.
#[derive(Debug)]
pub struct Places(crate::cache::Cache<Asked, (i64, i64)>);

/// How long a looked-up place is reused.
const PLACE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Default for Places {
    fn default() -> Self {
        Self(crate::cache::short_lived(10_000, PLACE_TTL))
    }
}

impl Places {
    async fn get(&self, db: &impl ConnectionTrait, asked: Asked) -> Result<Place, DbErr> {
        if let Some(place) = self.0.get(&asked) {
            return Ok(Ok(place));
        }
        let place = match pick_account(db, asked.0).await? {
            Ok(account) => pick_group(db, account, asked.1)
                .await?
                .map(|group| (account, group)),
            Err(refused) => Err(refused),
        };
        // Refusals are not kept: a group created a moment later is found at once.
        if let Ok(found) = place {
            self.0.insert(asked, found);
        }
        Ok(place)
    }
}

/// Opens every session of `openings` in one transaction; one outcome per opening, in order.
pub async fn open_many(
    db: &DatabaseConnection,
    known: &Places,
    openings: Vec<Opening>,
) -> Result<Vec<Result<Opened, OpenRefused>>, DbErr> {
    let mut places: HashMap<Asked, Place> = HashMap::new();
    for opening in &openings {
        let asked = (opening.account_id, opening.group_id);
        if let std::collections::hash_map::Entry::Vacant(slot) = places.entry(asked) {
            slot.insert(known.get(db, asked).await?);
        }
    }
    let place_of = |o: &Opening| places[&(o.account_id, o.group_id)];
    let accepted: Vec<(&Opening, (i64, i64))> = openings
        .iter()
        .filter_map(|o| place_of(o).ok().map(|place| (o, place)))
        .collect();
    let mut opened = if accepted.is_empty() {
        HashMap::new()
    } else {
        match write(db, &accepted).await {
            Ok(opened) => opened,
            // The batch's commit reached the database but its answer did not (the connection
            // dropped), and this is the run again: the sessions are there, by their tokens.
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                already_opened(db, &accepted).await?.ok_or(err)?
            }
            Err(err) => return Err(err),
        }
    };
    Ok(openings
        .iter()
        .map(|o| {
            place_of(o)?;
            opened
                .remove(&o.session_token_hash)
                .ok_or(OpenRefused::NoGroup)
        })
        .collect())
}

/// Writes the sessions of `accepted` in one transaction, then reads their places in line.
async fn write(
    db: &DatabaseConnection,
    accepted: &[(&Opening, (i64, i64))],
) -> Result<HashMap<String, Opened>, DbErr> {
    let mut opened: HashMap<String, Opened> = HashMap::new();
    let txn = crate::db::begin_write(db).await?;
    // A session never opens in a deleted group: its place may have been read before the delete
    // (or kept a moment, see `Places`). The live groups are read again here, key-share locked on
    // PostgreSQL, which a group's delete waits for (and which waits for a delete that came first;
    // it does not conflict with the assigner's updates of the group row). What is left out is
    // answered `NoGroup`.
    let asked: Vec<i64> = accepted.iter().map(|(_, (_, group))| *group).collect();
    let mut live = groups::Entity::find()
        .select_only()
        .column(groups::Column::Id)
        .filter(groups::Column::Id.is_in(asked))
        .filter(groups::Column::DeletedAt.is_null());
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        live = live
            .order_by_asc(groups::Column::Id)
            .lock(sea_orm::sea_query::LockType::KeyShare);
    }
    let live: std::collections::HashSet<i64> =
        live.into_tuple().all(&txn).await?.into_iter().collect();
    let kept: Vec<(&Opening, (i64, i64))> = accepted
        .iter()
        .filter(|(_, (_, group))| live.contains(group))
        .copied()
        .collect();
    let accepted = kept.as_slice();
    if accepted.is_empty() {
        txn.rollback().await?;
        return Ok(opened);
    }
    let now = Utc::now();
    let visitors = visitors::Entity::insert_many(accepted.iter().map(|(o, (account, _))| {
        visitors::ActiveModel {
            account_id: Set(*account),
            name: Set(o.name.clone()),
            email: Set(o.email.clone()),
            phone: Set(o.phone.clone()),
            user_agent: Set(o.user_agent.clone()),
            ip: Set(o.ip.clone()),
            referrer: Set(o.referrer.clone()),
            metadata: Set(o.metadata.clone()),
            session_token_hash: Set(o.session_token_hash.clone()),
            created_at: Set(now),
            last_seen_at: Set(now),
            email_before_agent: Set(o.email.is_some()),
            ..Default::default()
        }
    }))
    .exec_with_returning(&txn)
    .await?;
    let visitor_of: HashMap<&str, i64> = visitors
        .iter()
        .map(|v| (v.session_token_hash.as_str(), v.id))
        .collect();
    // In line at once (`queued_at`), so the answer can say where it stands; the enqueue job
    // announces it. One time for the batch: FIFO follows the ids, which follow the order here.
    let pending =
        conversations::Entity::insert_many(accepted.iter().map(|(o, (account, group))| {
            conversations::ActiveModel {
                account_id: Set(*account),
                visitor_id: Set(visitor_of[o.session_token_hash.as_str()]),
                group_id: Set(*group),
                status: Set(ConversationStatus::Pending),
                priority: Set(o.priority),
                queued_at: Set(Some(now)),
                // Only a message is activity that waits for an answer (the agent response timer).
                last_visitor_activity_at: Set(o.initial_message.is_some().then_some(now)),
                reassignment_count: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
        }))
        .exec_with_returning(&txn)
        .await?;
    let threads = threads::Entity::insert_many(pending.iter().map(|c| threads::ActiveModel {
        account_id: Set(c.account_id),
        conversation_id: Set(c.id),
        status: Set(ThreadStatus::Active),
        created_at: Set(now),
        ..Default::default()
    }))
    .exec_with_returning(&txn)
    .await?;
    let thread_of: HashMap<i64, i64> = threads.iter().map(|t| (t.conversation_id, t.id)).collect();
    let pending = conversations::Entity::update_many()
        .col_expr(
            conversations::Column::ActiveThreadId,
            by_id(
                conversations::Column::Id,
                thread_of.iter().map(|(c, t)| (*c, Some(*t))),
            ),
        )
        .filter(conversations::Column::Id.is_in(thread_of.keys().copied()))
        .exec_with_returning(&txn)
        .await?;
    let by_visitor: HashMap<i64, &conversations::Model> =
        pending.iter().map(|c| (c.visitor_id, c)).collect();
    let mut messages = Vec::new();
    for (o, _) in accepted {
        let visitor_id = visitor_of[o.session_token_hash.as_str()];
        let conversation = by_visitor[&visitor_id];
        let thread_id = thread_of[&conversation.id];
        if let Some(message) = &o.initial_message {
            messages.push(events::ActiveModel {
                account_id: Set(conversation.account_id),
                conversation_id: Set(conversation.id),
                thread_id: Set(thread_id),
                kind: Set(EventKind::Message),
                author_type: Set(AuthorType::Visitor),
                content: Set(message.clone()),
                created_at: Set(now),
                ..Default::default()
            });
        }
        opened.insert(
            o.session_token_hash.clone(),
            Opened {
                visitor_id,
                conversation: conversation.clone(),
                thread_id,
                position: 0,
            },
        );
    }
    if !messages.is_empty() {
        events::Entity::insert_many(messages)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    // Committed: from here on nothing may fail the sessions (a failure would run them
    // again). A place that cannot be read now is told over the socket when it connects.
    match queue_positions(db, &pending).await {
        Ok(positions) => {
            for session in opened.values_mut() {
                session.position = positions
                    .get(&session.conversation.id)
                    .copied()
                    .unwrap_or(0);
            }
        }
        Err(err) => {
            tracing::warn!(%err, "places in line not read after the sessions were written")
        }
    }
    Ok(opened)
}

/// The sessions of `accepted` as they were written, found by their token hashes; `None` when
/// none is there.
async fn already_opened(
    db: &DatabaseConnection,
    accepted: &[(&Opening, (i64, i64))],
) -> Result<Option<HashMap<String, Opened>>, DbErr> {
    let hashes = accepted.iter().map(|(o, _)| o.session_token_hash.clone());
    let found = visitors::Entity::find()
        .filter(visitors::Column::SessionTokenHash.is_in(hashes))
        .find_also_related(conversations::Entity)
        .all(db)
        .await?;
    let mut opened = HashMap::new();
    for (visitor, conversation) in found {
        let Some(conversation) = conversation else {
            return Ok(None);
        };
        let position = match conversation.status {
            ConversationStatus::Pending => {
                crate::conversation::queue_position(db, &conversation).await?
            }
            _ => 0,
        };
        opened.insert(
            visitor.session_token_hash,
            Opened {
                visitor_id: visitor.id,
                thread_id: conversation.active_thread_id.unwrap_or_default(),
                conversation,
                position,
            },
        );
    }
    // One transaction wrote the batch: if any session is there, all that were written are (a
    // session left out for a group deleted meanwhile is answered `NoGroup`).
    Ok((!opened.is_empty()).then_some(opened))
}

async fn pick_account(
    db: &impl ConnectionTrait,
    account_id: Option<i64>,
) -> Result<Result<i64, OpenRefused>, DbErr> {
    let ids: Vec<i64> = match account_id {
        Some(id) => {
            accounts::Entity::find_by_id(id)
                .select_only()
                .column(accounts::Column::Id)
                .into_tuple()
                .all(db)
                .await?
        }
        None => {
            accounts::Entity::find()
                .select_only()
                .column(accounts::Column::Id)
                .limit(2)
                .into_tuple()
                .all(db)
                .await?
        }
    };
    Ok(match (account_id, ids.as_slice()) {
        (_, [only]) => Ok(*only),
        (Some(_), _) => Err(OpenRefused::NoAccount),
        (None, _) => Err(OpenRefused::AccountRequired),
    })
}

async fn pick_group(
    db: &impl ConnectionTrait,
    account_id: i64,
    group_id: Option<i64>,
) -> Result<Result<i64, OpenRefused>, DbErr> {
    let mut query = groups::Entity::find()
        .select_only()
        .column(groups::Column::Id)
        .filter(groups::Column::AccountId.eq(account_id))
        .filter(groups::Column::DeletedAt.is_null());
    query = match group_id {
        Some(id) => query.filter(groups::Column::Id.eq(id)),
        None => query.filter(groups::Column::IsDefault.eq(true)),
    };
    let found: Option<i64> = query.into_tuple().one(db).await?;
    Ok(found.ok_or(OpenRefused::NoGroup))
}
