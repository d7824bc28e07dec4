//! `/v1/groups`: departments with their routing strategy, timers and members.
//! Any agent reads; supervisors and admins change.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{delete, get, post},
};
use chrono::{DateTime, Utc};
use entity::{
    agent_groups, agents,
    enums::{AgentRole, RoutingStrategy},
    groups,
};
use jobs::{assign_agent::request_assign, audit::AuditAction, timers::GroupDefaults};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, sea_query::OnConflict,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    extract::{Json, Path, Query},
    resource::{self, ListParams, Page},
};
use crate::{
    auth::CurrentAgent,
    chat::{agents::membership_changed, audit},
    domain::{Bounded, Description, Name, nullable},
    error::ApiError,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/{id}", get(show).patch(update).delete(remove))
        .route("/groups/{id}/restore", post(restore))
        .route("/groups/{id}/agents", post(add_member))
        .route("/groups/{id}/agents/{agent_id}", delete(remove_member))
}

// The timers' lower bounds are low on purpose: short timers are how a team (and the test suite)
// tries the scheduler out. The sweep period (`SWITCHBOARD_SWEEP_INTERVAL_SECONDS`) bounds how late
// a timer acts.
/// Seconds an agent has to answer before the chat is reassigned: 2 s to a day.
type ResponseTimeout = Bounded<2, 86_400>;
/// Seconds without visitor activity before the chat is closed: 2 s to a week.
type IdleTimeout = Bounded<2, 604_800>;
/// First-response SLA and maximum queue wait, in seconds: 2 s to a day.
type SlaSeconds = Bounded<2, 86_400>;
/// Reassignments before a chat stays queued and supervisors are alerted.
type MaxReassignments = Bounded<0, 20>;

/// A group as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    id: i64,
    name: String,
    description: Option<String>,
    routing_strategy: RoutingStrategy,
    is_default: bool,
    agent_response_timeout_seconds: i32,
    visitor_idle_timeout_seconds: i32,
    first_response_sla_seconds: i32,
    max_reassignments: i32,
    max_queue_wait_seconds: Option<i32>,
    agent_ids: Vec<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl GroupView {
    async fn many(
        db: &impl ConnectionTrait,
        rows: Vec<groups::Model>,
    ) -> Result<Vec<Self>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|group| group.id).collect();
        let members = agent_groups::Entity::find()
            .filter(agent_groups::Column::GroupId.is_in(ids))
            .all(db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|group| Self {
                agent_ids: members
                    .iter()
                    .filter(|m| m.group_id == group.id)
                    .map(|m| m.agent_id)
                    .collect(),
                id: group.id,
                name: group.name,
                description: group.description,
                routing_strategy: group.routing_strategy,
                is_default: group.is_default,
                agent_response_timeout_seconds: group.agent_response_timeout_seconds,
                visitor_idle_timeout_seconds: group.visitor_idle_timeout_seconds,
                first_response_sla_seconds: group.first_response_sla_seconds,
                max_reassignments: group.max_reassignments,
                max_queue_wait_seconds: group.max_queue_wait_seconds,
                created_at: group.created_at,
                updated_at: group.updated_at,
                deleted_at: group.deleted_at,
            })
            .collect())
    }

    async fn one(db: &impl ConnectionTrait, group: groups::Model) -> Result<Self, ApiError> {
        let mut views = Self::many(db, vec![group]).await?;
        views
            .pop()
            .ok_or_else(|| anyhow::anyhow!("view of one group is empty").into())
    }
}

/// Fields of a create (all but `name` optional) and of an update (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupFields {
    name: Option<Name>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<Description>>,
    routing_strategy: Option<RoutingStrategy>,
    is_default: Option<bool>,
    agent_response_timeout_seconds: Option<ResponseTimeout>,
    visitor_idle_timeout_seconds: Option<IdleTimeout>,
    first_response_sla_seconds: Option<SlaSeconds>,
    max_reassignments: Option<MaxReassignments>,
    #[serde(default, deserialize_with = "nullable")]
    max_queue_wait_seconds: Option<Option<SlaSeconds>>,
}

impl GroupFields {
    /// Applies every given field to `row`; returns the names of those changed.
    fn apply(self, row: &mut groups::ActiveModel) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! set {
            ($field:ident, $name:literal, $map:expr) => {
                if let Some(value) = self.$field {
                    row.$field = Set($map(value));
                    changed.push($name);
                }
            };
        }
        set!(name, "name", String::from);
        set!(description, "description", |d: Option<Description>| d
            .map(String::from));
        set!(routing_strategy, "routingStrategy", |s| s);
        set!(is_default, "isDefault", |d| d);
        set!(
            agent_response_timeout_seconds,
            "agentResponseTimeoutSeconds",
            ResponseTimeout::get
        );
        set!(
            visitor_idle_timeout_seconds,
            "visitorIdleTimeoutSeconds",
            IdleTimeout::get
        );
        set!(
            first_response_sla_seconds,
            "firstResponseSlaSeconds",
            SlaSeconds::get
        );
        set!(max_reassignments, "maxReassignments", MaxReassignments::get);
        set!(
            max_queue_wait_seconds,
            "maxQueueWaitSeconds",
            |s: Option<SlaSeconds>| s.map(SlaSeconds::get)
        );
        changed
    }
}

const DUPLICATE_NAME: &str =
    "a group with this name already exists in the account (if it was deleted, restore it)";

/// Makes `id` the account's only default group.
async fn make_default(db: &impl ConnectionTrait, account: i64, id: i64) -> Result<(), ApiError> {
    groups::Entity::update_many()
        .col_expr(groups::Column::IsDefault, false.into())
        .filter(groups::Column::AccountId.eq(account))
        .filter(groups::Column::Id.ne(id))
        .exec(db)
        .await?;
    Ok(())
}

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<GroupView>>, ApiError> {
    let (rows, next_cursor) =
        resource::page::<groups::Entity>(&state.db, caller.account_id(), &params, |g| g.id).await?;
    let items = GroupView::many(&state.db, rows).await?;
    Ok(Json(Page { items, next_cursor }))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<GroupView>, ApiError> {
    let group = resource::fetch::<groups::Entity>(&state.db, caller.account_id(), id, true).await?;
    Ok(Json(GroupView::one(&state.db, group).await?))
}

async fn create(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(fields): Json<GroupFields>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    caller.require(AgentRole::Supervisor)?;
    if fields.name.is_none() {
        return Err(ApiError::Unprocessable("missing field `name`".into()));
    }
    let now = Utc::now();
    let mut row = groups::ActiveModel {
        account_id: Set(caller.account_id()),
        description: Set(None),
        is_default: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
        ..GroupDefaults::NEW_GROUP.row()
    };
    fields.apply(&mut row);
    let txn = jobs::db::begin_write(&state.db).await?;
    let group = row
        .insert(&txn)
        .await
        .map_err(ApiError::conflict_on_unique(DUPLICATE_NAME))?;
    if group.is_default {
        make_default(&txn, caller.account_id(), group.id).await?;
    }
    txn.commit().await?;
    audit::record(
        &state,
        &caller,
        AuditAction::GroupCreated,
        group.id,
        json!({ "name": group.name }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(GroupView::one(&state.db, group).await?),
    ))
}

async fn update(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(fields): Json<GroupFields>,
) -> Result<Json<GroupView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let txn = jobs::db::begin_write(&state.db).await?;
    let group = resource::fetch::<groups::Entity>(&txn, caller.account_id(), id, false).await?;
    if group.is_default && fields.is_default == Some(false) {
        return Err(ApiError::Conflict(
            "the account needs a default group: make another group the default instead".into(),
        ));
    }
    let mut row: groups::ActiveModel = group.into();
    let changed = fields.apply(&mut row);
    row.updated_at = Set(Utc::now());
    let group = row
        .update(&txn)
        .await
        .map_err(ApiError::conflict_on_unique(DUPLICATE_NAME))?;
    if group.is_default {
        make_default(&txn, caller.account_id(), group.id).await?;
    }
    txn.commit().await?;
    audit::record(
        &state,
        &caller,
        AuditAction::GroupUpdated,
        id,
        json!({ "changed": changed }),
    )
    .await;
    Ok(Json(GroupView::one(&state.db, group).await?))
}

async fn remove(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    // The check and the delete in one transaction, the group row locked first (PostgreSQL): a
    // session being opened in the group holds a key-share lock on it until it commits (see
    // `jobs::session`), so its chat is counted below, or the session finds the group deleted.
    let txn = jobs::db::begin_write(&state.db).await?;
    let mut read = groups::Entity::find_by_id(id)
        .filter(groups::Column::AccountId.eq(caller.account_id()))
        .filter(groups::Column::DeletedAt.is_null());
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        read = read.lock(sea_orm::sea_query::LockType::Update);
    }
    let group = read.one(&txn).await?.ok_or(ApiError::NotFound("group"))?;
    if group.is_default {
        return Err(ApiError::Conflict(
            "the default group cannot be deleted: make another group the default first".into(),
        ));
    }
    // Its waiting and active chats would be stranded: no assigner serves a deleted group.
    let live = entity::conversations::Entity::find()
        .filter(entity::conversations::Column::GroupId.eq(id))
        .filter(entity::conversations::Column::Status.is_in([
            entity::enums::ConversationStatus::Pending,
            entity::enums::ConversationStatus::Active,
        ]))
        .count(&txn)
        .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!(
            "the group still has {live} waiting or active conversations: transfer or close them first"
        )));
    }
    resource::set_deleted::<groups::Entity>(&txn, caller.account_id(), id, true).await?;
    txn.commit().await?;
    audit::record(&state, &caller, AuditAction::GroupDeleted, id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<GroupView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let group = resource::restore::<groups::Entity>(&state, &caller, id).await?;
    Ok(Json(GroupView::one(&state.db, group).await?))
}

/// Most agents one request adds.
const MEMBERS_PER_REQUEST: usize = 100;

/// One agent (`agentId`) or several (`agentIds`, the form of the API Switchboard replaces).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddMembers {
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
}

impl AddMembers {
    /// The agents to add, each once, in the order given.
    fn agent_ids(self) -> Result<Vec<i64>, ApiError> {
        let ids = match (self.agent_id, self.agent_ids) {
            (Some(id), None) => vec![id],
            (None, Some(ids)) => ids,
            _ => {
                return Err(ApiError::Unprocessable(
                    "give either agentId or agentIds".into(),
                ));
            }
        };
        if ids.is_empty() || ids.len() > MEMBERS_PER_REQUEST {
            return Err(ApiError::Unprocessable(format!(
                "agentIds takes 1 to {MEMBERS_PER_REQUEST} agents"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        Ok(ids.into_iter().filter(|id| seen.insert(*id)).collect())
    }
}

async fn add_member(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<AddMembers>,
) -> Result<Json<GroupView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let agent_ids = body.agent_ids()?;
    let account = caller.account_id();
    let group = resource::fetch::<groups::Entity>(&state.db, account, id, false).await?;
    // Every agent must be the account's before any is added: a refused request changes nothing.
    let found = agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .filter(agents::Column::AccountId.eq(account))
        .filter(agents::Column::Id.is_in(agent_ids.clone()))
        .filter(agents::Column::DeletedAt.is_null())
        .into_tuple::<i64>()
        .all(&state.db)
        .await?;
    if found.len() != agent_ids.len() {
        return Err(ApiError::NotFound("agent"));
    }
    // Adding a member twice is the same as adding it once.
    let now = Utc::now();
    agent_groups::Entity::insert_many(agent_ids.iter().map(|&agent_id| {
        agent_groups::ActiveModel {
            agent_id: Set(agent_id),
            group_id: Set(id),
            account_id: Set(account),
            created_at: Set(now),
        }
    }))
    .on_conflict(
        OnConflict::columns([agent_groups::Column::AgentId, agent_groups::Column::GroupId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&state.db)
    .await?;
    for &agent_id in &agent_ids {
        membership_changed(&state, account, agent_id, id, true);
    }
    // A new member may take what waits.
    if let Err(err) = request_assign(&state.job_context(), account, id).await {
        tracing::warn!(group_id = id, %err, "could not offer the line to the new members");
    }
    for &agent_id in &agent_ids {
        audit::record(
            &state,
            &caller,
            AuditAction::GroupMemberAdded,
            id,
            json!({ "agentId": agent_id }),
        )
        .await;
    }
    Ok(Json(GroupView::one(&state.db, group).await?))
}

async fn remove_member(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path((id, agent_id)): Path<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let account = caller.account_id();
    resource::fetch::<groups::Entity>(&state.db, account, id, false).await?;
    let removed = agent_groups::Entity::delete_many()
        .filter(agent_groups::Column::AccountId.eq(account))
        .filter(agent_groups::Column::GroupId.eq(id))
        .filter(agent_groups::Column::AgentId.eq(agent_id))
        .exec(&state.db)
        .await?;
    if removed.rows_affected == 0 {
        return Err(ApiError::NotFound("group member"));
    }
    membership_changed(&state, account, agent_id, id, false);
    audit::record(
        &state,
        &caller,
        AuditAction::GroupMemberRemoved,
        id,
        json!({ "agentId": agent_id }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
