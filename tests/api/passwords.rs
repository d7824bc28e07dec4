//! Password checks under attack: a burst of wrong passwords is bounded in checks and memory
//! (measured on a server process of its own), and the operator listener counts failures per
//! address and per e-mail.

use std::{net::IpAddr, time::Instant};

use futures::future::join_all;
use reqwest::{StatusCode, header};
use serde_json::json;

use crate::{helpers::*, process::Server};

/// argon2's memory per check with the crate's default parameters (19 MiB), in KiB.
const ARGON2_KIB: u64 = 19 * 1024;

/// A burst of concurrent wrong sign-ins (100, or ten per core) on `/v1/auth/login` (the per-address limit lifted, so only the
/// global bound is at work) and as many wrong basic-auth requests on the operator
/// listener: the checks that run at once are bounded by the cores, the excess is refused with a
/// 503 and `Retry-After` instead of waiting, the operator listener runs no more checks than its
/// failure budget, and the server's peak memory grows by at most one argon2 buffer per core
/// (plus slack), however large the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_wrong_passwords_is_bounded_in_checks_and_memory() {
    // Well past what the server admits at once (five checks per core: one running, four
    // waiting), whatever the machine.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let burst = 100.max(cores * 10);
    let server = Server::start(&[("SWITCHBOARD_LOGIN_RATE_PER_MINUTE", "100000")]).await;
    let client = reqwest::Client::new();
    let login = |password: &str| {
        client
            .post(format!("{}/v1/auth/login", server.address))
            .json(&json!({ "email": ADMIN_EMAIL, "password": password }))
            .send()
    };
    let first = login(ADMIN_PASSWORD).await.expect("the server answers");
    assert_eq!(first.status(), StatusCode::OK);
    let before = server.peak_rss_kib();

    let started = Instant::now();
    let answers = join_all((0..burst).map(|_| login("wrong password"))).await;
    let login_took = started.elapsed();
    let (mut checked, mut refused) = (0, 0);
    for answer in answers {
        let answer = answer.expect("every request is answered");
        match answer.status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(answer.headers().contains_key(header::RETRY_AFTER));
                let body: serde_json::Value = answer.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", answer.text().await.unwrap()),
        }
    }

    let started = Instant::now();
    let answers = join_all((0..burst).map(|_| {
        client
            .get(format!("{}/api/v1/queues", server.ops_address))
            .basic_auth(ADMIN_EMAIL, Some("wrong password"))
            .send()
    }))
    .await;
    let ops_took = started.elapsed();
    let mut ops = std::collections::BTreeMap::<u16, usize>::new();
    for answer in answers {
        let answer = answer.expect("every request is answered");
        if answer.status() != StatusCode::UNAUTHORIZED {
            assert!(answer.headers().contains_key(header::RETRY_AFTER));
        }
        *ops.entry(answer.status().as_u16()).or_default() += 1;
    }
    let after = server.peak_rss_kib();
    let allowance = cores as u64 * ARGON2_KIB + 64 * 1024;
    eprintln!(
        "login: {checked} checked, {refused} refused in {login_took:?}; operator listener: \
         {ops:?} in {ops_took:?}; peak RSS {before} KiB -> {after} KiB (+{} KiB, allowed {allowance})",
        after - before
    );
    assert!(
        refused > 0,
        "a burst beyond the bound is refused, not queued"
    );
    let ops_checked = ops.get(&401).copied().unwrap_or_default();
    assert!(
        ops_checked <= switchboard::ops::auth::FAILURES as usize,
        "the operator listener ran {ops_checked} checks for one address: {ops:?}"
    );
    assert!(
        ops.keys().all(|status| [401, 429, 503].contains(status)),
        "{ops:?}"
    );
    assert!(
        after - before <= allowance,
        "peak RSS grew by {} KiB (allowed {allowance} KiB for {cores} cores)",
        after - before
    );
    // The server is fine afterwards.
    assert_eq!(
        login(ADMIN_PASSWORD).await.unwrap().status(),
        StatusCode::OK
    );
}

/// The operator listener counts failures per address and per e-mail: an address that spent its
/// budget on other e-mails does not lock the admin out, while an e-mail that spent its own is
/// refused from any address, even with the right password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_are_counted_per_address_and_per_email() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    app.create_agent(
        &admin,
        json!({ "name": "Ops two", "email": "ops2@example.com", "password": "password-123", "role": "admin" }),
    )
    .await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let ops = |client: &reqwest::Client, email: &str, password: &str| {
        client
            .get(format!("{}/api/v1/queues", app.ops_address))
            .basic_auth(email, Some(password))
            .send()
    };
    let failures = switchboard::ops::auth::FAILURES;
    // The second admin works from one address; its sign-in there is no longer remembered (a
    // remembered one passes anyway) when the guesses below begin.
    let workplace = from(70);
    let reply = ops(&workplace, "ops2@example.com", "password-123")
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    tokio::time::sleep(switchboard::ops::auth::REMEMBER + std::time::Duration::from_secs(1)).await;

    // One address spends its budget on e-mails that are not the admin's.
    let attacker = from(1);
    let status = |client: &reqwest::Client, email: &str, password: &str| {
        let reply = ops(client, email, password);
        async move { reply.await.expect("an answer").status() }
    };
    for attempt in 0..failures {
        let email = format!("guess{attempt}@example.com");
        let status = status(&attacker, &email, "guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let reply = ops(&attacker, "guess@example.com", "guess").await.unwrap();
    assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers().contains_key(header::RETRY_AFTER));
    // The admin behind the same address still gets in with the right password.
    let reply = ops(&attacker, ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "{}",
        reply.text().await.unwrap()
    );

    // Guesses at one admin's password, each from another address, block that e-mail.
    for attempt in 0..failures {
        let status = status(&from(20 + attempt as u8), "ops2@example.com", "guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let reply = ops(&from(60), "ops2@example.com", "password-123")
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers().contains_key(header::RETRY_AFTER));
    // From where it signed in lately, the admin still gets in: strangers' guesses cannot lock it
    // out; a wrong password from there is refused as usual.
    let reply = ops(&workplace, "ops2@example.com", "password-123")
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    tokio::time::sleep(switchboard::ops::auth::REMEMBER + std::time::Duration::from_secs(1)).await;
    let reply = ops(&workplace, "ops2@example.com", "wrong-guess")
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    // Other e-mails from fresh addresses are unaffected.
    let reply = ops(&from(61), ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}
