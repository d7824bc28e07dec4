//! Accounts made by operators on the operator listener (`POST /accounts`, `GET /accounts`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

/// A request to the operator listener with basic auth.
async fn ops(app: &TestApp, user: (&str, &str), body: Option<Value>) -> Reply {
    let url = format!("{}/accounts", app.ops_address);
    let request = match &body {
        Some(body) => app.client.post(url).json(body),
        None => app.client.get(url),
    };
    let response = request
        .basic_auth(user.0, Some(user.1))
        .send()
        .await
        .expect("the request is sent");
    let status = response.status();
    let text = response.text().await.expect("a body");
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

both_backends! {
    async fn an_operator_opens_an_account_whose_admin_sees_only_it(backend: Backend) {
        let app = spawn_app(backend).await;
        let operator = (ADMIN_EMAIL, ADMIN_PASSWORD);
        let before = ops(&app, operator, None).await;
        assert_eq!(before.status, StatusCode::OK);
        assert_eq!(before.body["items"].as_array().unwrap().len(), 1, "the operator account");

        // Bad input is refused and creates nothing.
        for bad in [
            json!({ "name": "Acme", "adminEmail": "not-an-email", "adminPassword": "password-123" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test", "adminPassword": "short" }),
            json!({ "name": "", "adminEmail": "boss@acme.test", "adminPassword": "password-123" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test", "adminPassword": "password-123", "plan": "gold" }),
        ] {
            let reply = ops(&app, operator, Some(bad.clone())).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {:?}", reply.body);
        }
        assert_eq!(ops(&app, operator, None).await.body["items"].as_array().unwrap().len(), 1);

        let created = ops(&app, operator, Some(json!({
            "name": "Acme", "adminEmail": "Boss@Acme.test", "adminPassword": "password-123"
        }))).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        assert_eq!(created.body["name"], "Acme");
        let account_id = created.body["id"].as_i64().unwrap();
        let listed = ops(&app, operator, None).await;
        let ids: Vec<i64> = listed.body["items"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
        assert!(ids.contains(&account_id));

        // Its admin signs in to its own account: its own default group, none of the operator's rows.
        let token = app.token_for("boss@acme.test", "password-123").await;
        let me = app.me(&token).await;
        assert_eq!(me["id"], created.body["adminAgentId"]);
        assert_eq!(me["role"], "admin");
        let groups = app.groups(&token).await;
        let names: Vec<_> = groups["items"].as_array().unwrap().iter().map(|g| g["name"].clone()).collect();
        assert_eq!(names, [json!("General")]);
        let agents = app.try_agents(&token).await;
        assert_eq!(agents.body["items"].as_array().unwrap().len(), 1);
        // The new account's trail says which operator opened it.
        let operator_id = app.me(&app.admin_token().await).await["id"].clone();
        let entry = eventually(Duration::from_secs(10), "the account.created entry", || async {
            let audit = app.audit(&token, Some("account.created")).await;
            audit["items"].as_array().and_then(|items| items.first().cloned())
        })
        .await;
        assert_eq!(entry["details"]["operatorAgentId"], operator_id);
        assert_eq!(entry["subjectId"], account_id);

        // An admin of any other account is no operator.
        let refused = ops(&app, ("boss@acme.test", "password-123"), None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let refused = ops(&app, ("boss@acme.test", "password-123"), Some(json!({
            "name": "Mine", "adminEmail": "x@acme.test", "adminPassword": "password-123"
        }))).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(ops(&app, operator, None).await.body["items"].as_array().unwrap().len(), 2);
    }
}

/// Runs a one-shot `switchboard` command on `app`'s database; returns (success, stdout, stderr).
fn one_shot(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = crate::process::bare(&app.storage.data_dir);
    command
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(args);
    if let Some(url) = &app.storage.database_url {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().expect("the command runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The password a command printed once.
fn printed_password(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password in {stdout}"))
        .to_owned()
}

both_backends! {
    async fn the_command_line_opens_accounts_and_resets_lost_passwords(backend: Backend) {
        let app = spawn_app(backend).await;
        let create = ["account", "create", "--name", "Acme", "--admin-email", "boss@acme.test"];
        let (ok, out, err) = one_shot(&app, &create, &[]);
        assert!(ok, "{out}{err}");
        assert!(!err.contains("panicked"), "{err}");
        let password = printed_password(&out);
        let token = app.token_for("boss@acme.test", &password).await;
        let me = app.me(&token).await;
        assert_eq!(me["role"], "admin");
        let groups = app.groups(&token).await;
        assert_eq!(groups["items"].as_array().unwrap().len(), 1, "its own default group");
        // The record is written at once: no worker is needed for a one-shot command.
        let audit = app.audit(&token, Some("account.created")).await;
        assert_eq!(audit["items"].as_array().unwrap().len(), 1);

        // Bad input: a clear message, no panic, nothing created.
        for (bad, env, why) in [
            (&["account", "create", "--name", "X", "--admin-email", "nope"][..], &[][..], "--admin-email"),
            (&["account", "create", "--name", "", "--admin-email", "a@b.test"], &[], "--name"),
            (&["account", "create", "--name", "X", "--admin-email", "a@b.test"], &[("SWITCHBOARD_NEW_PASSWORD", "short")], "SWITCHBOARD_NEW_PASSWORD"),
            (&["admin", "reset-password", "--email", "nobody@acme.test"], &[], "no agent"),
        ] {
            let (ok, out, err) = one_shot(&app, bad, env);
            assert!(!ok, "{bad:?} succeeded: {out}");
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        assert!(app.login("a@b.test", "password-123").await.status.is_client_error());

        // A lost password: the new one from the environment, every old token revoked.
        let reset = ["admin", "reset-password", "--email", "boss@acme.test"];
        let (ok, out, err) = one_shot(&app, &reset, &[("SWITCHBOARD_NEW_PASSWORD", "brand-new-pass")]);
        assert!(ok, "{out}{err}");
        assert!(!out.contains("brand-new-pass"), "the given password is not echoed: {out}");
        assert_eq!(app.try_me(&token).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.login("boss@acme.test", &password).await.status, StatusCode::UNAUTHORIZED);
        let fresh = app.token_for("boss@acme.test", "brand-new-pass").await;
        assert_eq!(app.me(&fresh).await["id"], me["id"]);
    }
}
