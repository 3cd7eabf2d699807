//! The websocket balance feed and who may see what: snapshot then every
//! committed change in order, resume with `since` without gaps or
//! duplicates, tickets, heartbeats, and no account reading another's.

use std::time::Duration;

use actix_web::http::StatusCode;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sms_credit_actors::clock::ManualClock;

use crate::helpers::{fresh_directory, test_settings, TestApp, ADMIN_TOKEN};

pub(crate) type Connection = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

fn ws_url(app: &TestApp, path: &str) -> String {
    app.url(path).replacen("http://", "ws://", 1)
}

/// Opens a feed offering `protocols`; the handshake's status on refusal.
pub(crate) async fn open(
    app: &TestApp,
    path: &str,
    protocols: &[&str],
) -> Result<Connection, StatusCode> {
    let mut request = awc::Client::new().ws(ws_url(app, path));
    if !protocols.is_empty() {
        request = request.protocols(protocols);
    }
    match request.connect().await {
        Ok((response, connection)) => {
            if !protocols.is_empty() {
                let chosen = response.headers().get("Sec-WebSocket-Protocol").unwrap();
                assert_eq!(chosen, "sms-credit-feed");
            }
            Ok(connection)
        }
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status),
        Err(other) => panic!("unexpected websocket failure: {other}"),
    }
}

/// The next JSON message, answering pings on the way; within 30 s in all
/// (heartbeats do not extend the wait).
pub(crate) async fn next_json(connection: &mut Connection) -> Value {
    // A bound on liveness, not a speed test: generous for a loaded CI machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, connection.next())
            .await
            .expect("a feed message within 30 s (only pings came, or nothing)")
            .expect("the feed is open")
            .unwrap();
        match frame {
            ws::Frame::Text(bytes) => return serde_json::from_slice(&bytes).unwrap(),
            ws::Frame::Ping(bytes) => connection.send(ws::Message::Pong(bytes)).await.unwrap(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Opens the admin feed with a ticket and waits for its first frame, which
/// says it is live: every change committed from then on will be sent.
pub(crate) async fn open_admin_feed(app: &TestApp) -> Connection {
    let (status, issued) = app
        .request("POST", "/v1/admin/feed-tickets", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let path = format!(
        "/v1/admin/feed?ticket={}",
        issued["ticket"].as_str().unwrap()
    );
    let mut feed = open(app, &path, &[]).await.unwrap();
    assert_eq!(next_json(&mut feed).await, json!({"live": true}));
    feed
}

async fn account_with_token(app: &TestApp, phone: &str) -> (i64, String) {
    let id = app.create_account(phone).await;
    (id, app.issue_token(id).await)
}

on_both_stores!(the_feed_sends_the_snapshot_then_each_committed_change_in_order);
async fn the_feed_sends_the_snapshot_then_each_committed_change_in_order() {
    let app = TestApp::spawn().await;
    let (id, token) = account_with_token(&app, "+14155553000").await;
    app.post_adjustment(id, 1_500_000, "before").await;

    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut feed).await,
        json!({"seq": 1, "balance_micros": 1_500_000})
    );
    for (index, amount) in [250_000, -100_000, 50_000].into_iter().enumerate() {
        let (status, _) = app
            .post_adjustment(id, amount, &format!("live-{index}"))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut balance = 1_500_000;
    for (seq, amount) in [(2, 250_000), (3, -100_000), (4, 50_000)] {
        balance += amount;
        let event = next_json(&mut feed).await;
        assert_eq!(event["seq"], seq);
        assert_eq!(event["type"], "adjustment");
        assert_eq!(event["amount_micros"], amount);
        // A row as the REST API lists it.
        assert_eq!(event["balance_after_micros"], balance);
        // The holder reads the neutral description, never the reason.
        assert_eq!(event["description"], "Balance adjustment");
        assert!(event.get("reason").is_none(), "{event}");
        assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
    }
    feed.send(ws::Message::Close(None)).await.unwrap();
}

on_both_stores!(since_replays_what_was_missed_then_goes_live_without_gaps_or_duplicates);
async fn since_replays_what_was_missed_then_goes_live_without_gaps_or_duplicates() {
    let app = TestApp::spawn().await;
    let (id, token) = account_with_token(&app, "+14155553100").await;
    for index in 0..5 {
        app.post_adjustment(id, 100_000, &format!("missed-{index}"))
            .await;
    }
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=2"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut feed).await,
        json!({"seq": 5, "balance_micros": 500_000})
    );

    // Changes keep coming while the missed ones are replayed.
    let writer = {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/admin/accounts/{id}/adjustments"));
        actix_rt::spawn(async move {
            for index in 0..40 {
                let response = client
                    .post(&url)
                    .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
                    .send_json(&json!({"amount_micros": 10_000, "reason": "live", "idempotency_key": format!("live-{index}")}))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        })
    };
    let mut seqs = Vec::new();
    while seqs.len() < 43 {
        let event = next_json(&mut feed).await;
        seqs.push(event["seq"].as_i64().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(
        seqs,
        (3..=45).collect::<Vec<_>>(),
        "every change once, in order"
    );

    // A client claiming to be ahead of the ledger gets everything after the snapshot.
    let mut ahead = open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=999"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut ahead).await["seq"], 45);
    app.post_adjustment(id, 1, "after-ahead").await;
    assert_eq!(next_json(&mut ahead).await["seq"], 46);
}

on_both_stores!(tickets_open_the_feed_once_and_the_admin_feed_sees_every_account);
async fn tickets_open_the_feed_once_and_the_admin_feed_sees_every_account() {
    let app = TestApp::spawn().await;
    let (first, token) = account_with_token(&app, "+14155553200").await;
    let second = app.create_account("+14155553201").await;

    let (status, issued) = app
        .request(
            "POST",
            &format!("/v1/accounts/{first}/feed-tickets"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ticket = issued["ticket"].as_str().unwrap().to_string();
    assert_eq!(issued["expires_in_secs"], 30);
    let path = format!("/v1/accounts/{first}/feed?ticket={ticket}");
    let mut feed = open(&app, &path, &[]).await.unwrap();
    assert_eq!(next_json(&mut feed).await["seq"], 0);
    assert_eq!(
        open(&app, &path, &[]).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "single use"
    );

    // The admin feed's first frame says it is live: the changes below are
    // committed after it, so it must send them (before, they could land
    // before it had read where each account stood, and it waited forever).
    let mut admin = open_admin_feed(&app).await;
    app.post_adjustment(first, 10, "a").await;
    app.post_adjustment(second, 20, "b").await;
    let seen: Vec<(i64, i64)> = [next_json(&mut admin).await, next_json(&mut admin).await]
        .iter()
        .map(|event| {
            (
                event["account_id"].as_i64().unwrap(),
                event["amount_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, vec![(first, 10), (second, 20)]);
    assert_eq!(
        next_json(&mut feed).await["amount_micros"],
        10,
        "the account feed sees only its own"
    );

    // An account token does not open the admin feed.
    assert_eq!(
        open(&app, "/v1/admin/feed", &["sms-credit-feed", &token])
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
}

on_both_stores!(no_account_token_reads_another_account);
async fn no_account_token_reads_another_account() {
    let app = TestApp::spawn().await;
    let (own, token) = account_with_token(&app, "+14155553300").await;
    let (other, other_token) = account_with_token(&app, "+14155553301").await;
    app.post_adjustment(other, 5_000_000, "secret").await;

    let (status, me) = app
        .request("GET", "/v1/accounts/me", Some(&token), None)
        .await;
    assert_eq!((status, me["id"].as_i64()), (StatusCode::OK, Some(own)));
    let (status, mine) = app
        .request("GET", &format!("/v1/accounts/{own}"), Some(&token), None)
        .await;
    assert_eq!(
        (status, mine["balance_micros"].as_i64()),
        (StatusCode::OK, Some(0))
    );
    let (status, _) = app
        .request(
            "GET",
            &format!("/v1/accounts/{own}/transactions?latest=5"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every account-scoped route, with a token of another account, without a
    // token, with the admin token (not an account token) and with a revoked one.
    let routes = [
        ("GET", format!("/v1/accounts/{other}")),
        ("GET", format!("/v1/accounts/{other}/transactions")),
        ("GET", format!("/v1/accounts/{other}/transactions?latest=5")),
        ("POST", format!("/v1/accounts/{other}/feed-tickets")),
    ];
    for (method, path) in &routes {
        let (status, body) = app.request(method, path, Some(&token), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(!body.to_string().contains("5000000"), "{body}");
        let (status, _) = app.request(method, path, None, None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        let (status, _) = app.request(method, path, Some("sct_0000"), None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a made-up token"
        );
    }
    let feed = format!("/v1/accounts/{other}/feed");
    assert_eq!(
        open(&app, &feed, &["sms-credit-feed", &token]).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        open(&app, &feed, &[]).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        open(&app, &format!("{feed}?ticket=sft_guess"), &[])
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (_, own_ticket) = app
        .request(
            "POST",
            &format!("/v1/accounts/{own}/feed-tickets"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        open(
            &app,
            &format!("{feed}?ticket={}", own_ticket["ticket"].as_str().unwrap()),
            &[]
        )
        .await
        .err(),
        Some(StatusCode::NOT_FOUND),
        "a ticket is for its own account only"
    );

    // A revoked token opens nothing.
    let (status, _) = app
        .request(
            "DELETE",
            &format!("/v1/admin/accounts/{other}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .request("GET", "/v1/accounts/me", Some(&other_token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        open(&app, &feed, &["sms-credit-feed", &other_token])
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
}

on_both_stores!(the_feed_pings_and_drops_a_silent_client);
async fn the_feed_pings_and_drops_a_silent_client() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.feed.heartbeat = Duration::from_millis(200);
    let app = TestApp::spawn_with(directory, settings).await;
    let (id, token) = account_with_token(&app, "+14155553400").await;
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    let mut pings = 0;
    // Never answer: after the snapshot, pings, then a close for silence.
    loop {
        let frame = actix_rt::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the server acts within 10 s");
        match frame {
            Some(Ok(ws::Frame::Text(_))) => {}
            Some(Ok(ws::Frame::Ping(_))) => pings += 1,
            Some(Ok(ws::Frame::Close(reason))) => {
                assert_eq!(
                    reason.unwrap().description.as_deref(),
                    Some("no answer to pings")
                );
                break;
            }
            None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 2, "pinged {pings} times before giving up");
}

/// A websocket client on a plain socket with a 4 KiB receive buffer that
/// reads one frame at a time, as slowly as it is told, and answers pings
/// as every client must.
struct SlowClient {
    stream: tokio::net::TcpStream,
}

/// What a slow client saw before the feed ended.
#[derive(Debug)]
enum SlowEnd {
    Closed {
        code: u16,
        reason: String,
    },
    /// The connection dropped without a close frame (1006).
    Dropped,
}

/// How a slow client reads.
struct Reading {
    /// The pause before each frame.
    every: Duration,
    /// After this many changes, it reads nothing for the given time.
    stall: Option<(usize, Duration)>,
    /// It stops (the feed still open) once it has this change.
    until_seq: i64,
}

impl SlowClient {
    async fn connect(app: &TestApp, path: &str, token: &str) -> SlowClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address: std::net::SocketAddr =
            app.address.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: sms-credit-feed, {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        SlowClient { stream }
    }

    /// The next frame: (opcode, payload), or `None` at the end of the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let first = self.stream.read_u8().await.ok()?;
        let second = self.stream.read_u8().await.ok()?;
        let length = match second & 0x7f {
            126 => u64::from(self.stream.read_u16().await.ok()?),
            127 => self.stream.read_u64().await.ok()?,
            short => u64::from(short),
        };
        let mut payload = vec![0; usize::try_from(length).unwrap()];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some((first & 0x0f, payload))
    }

    /// A frame from the client: masked (with a zero key, as the protocol allows).
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![
            0x80 | opcode,
            0x80 | u8::try_from(payload.len()).unwrap(),
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(payload);
        let _ = self.stream.write_all(&frame).await;
    }

    /// Reads as `reading` says, pushing each change's `seq` to `seqs`, until
    /// it has `reading.until_seq` (`None`) or the feed ends (how).
    async fn read(&mut self, reading: &Reading, seqs: &mut Vec<i64>) -> Option<SlowEnd> {
        let mut changes = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the feed neither ended nor reached seq {} in 180 s (last {:?})",
                reading.until_seq,
                seqs.last()
            );
            actix_rt::time::sleep(reading.every).await;
            if reading.stall.is_some_and(|(after, _)| after == changes) {
                actix_rt::time::sleep(reading.stall.unwrap().1).await;
            }
            let frame = actix_rt::time::timeout(Duration::from_secs(30), self.frame())
                .await
                .unwrap_or_else(|_| panic!("no frame for 30 s (last seq {:?})", seqs.last()));
            let Some((opcode, payload)) = frame else {
                return Some(SlowEnd::Dropped);
            };
            match opcode {
                0x1 => {
                    let change: Value = serde_json::from_slice(&payload).unwrap();
                    // The snapshot has no type; changes do.
                    if change.get("type").is_some() {
                        changes += 1;
                        let seq = change["seq"].as_i64().unwrap();
                        seqs.push(seq);
                        if seq >= reading.until_seq {
                            return None;
                        }
                    }
                }
                0x8 => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                    self.send(0x8, &payload[..2]).await;
                    return Some(SlowEnd::Closed { code, reason });
                }
                0x9 => self.send(0xA, &payload).await,
                _ => {}
            }
        }
    }
}

/// `seqs` is `first..=last`, each once, in order; else says where not.
fn assert_every_change_once_in_order(seqs: &[i64], first: i64, last: i64) {
    let expected: Vec<i64> = (first..=last).collect();
    if let Some(at) =
        (0..expected.len().max(seqs.len())).find(|&at| seqs.get(at) != expected.get(at))
    {
        panic!(
            "{} changes received, {} expected; at position {at} came {:?} where {:?} was due",
            seqs.len(),
            expected.len(),
            seqs.get(at),
            expected.get(at)
        );
    }
}

/// Writes `count` adjustments of 1 000 µ$ to `id`, 16 at a time.
pub(crate) async fn write_changes(app: &TestApp, id: i64, count: usize, prefix: &str) {
    use futures_util::stream;
    stream::iter(0..count)
        .map(|index| async move {
            app.post_adjustment(id, 1_000, &format!("{prefix}-{index}"))
                .await
        })
        .buffer_unordered(16)
        .for_each(|(status, body)| async move { assert_eq!(status, StatusCode::OK, "{body}") })
        .await;
}

/// Settings with a feed queue of `queue` changes and a metrics token.
fn feed_settings(
    directory: &crate::database::TestDatabase,
    queue: usize,
) -> sms_credit::config::Settings {
    let mut settings = test_settings(directory);
    settings.feed.queue = queue;
    settings.access.metrics_token = Some(sms_credit::config::Secret::new(METRICS_TOKEN));
    settings
}

const METRICS_TOKEN: &str = "feed-metrics-token";

/// `sms_credit_feed_dropped_slow_total` as `/metrics` says it.
async fn slow_closes(app: &TestApp) -> u64 {
    let (status, metrics) = app
        .request("GET", "/metrics", Some(METRICS_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    let text = metrics["raw"].as_str().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("sms_credit_feed_dropped_slow_total "))
        .unwrap_or_else(|| panic!("no slow-close counter in {text}"))
        .parse()
        .unwrap()
}

on_both_stores!(a_client_away_for_three_pages_of_changes_catches_up_in_one_connection);
/// 1 500 changes (three pages of the replay, six times the default queue)
/// written while the client was away: `?since=0` with a client that reads
/// normally brings every one, in order, and then the live ones, in the same
/// connection; nothing counts as too slow.
async fn a_client_away_for_three_pages_of_changes_catches_up_in_one_connection() {
    let directory = fresh_directory();
    let settings = feed_settings(&directory, 256);
    let app = TestApp::spawn_with(directory, settings).await;
    let (id, token) = account_with_token(&app, "+14155553080").await;
    write_changes(&app, id, 1_500, "away").await;
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=0"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut feed).await,
        json!({"seq": 1_500, "balance_micros": 1_500_000})
    );
    for seq in 1..=1_500 {
        assert_eq!(next_json(&mut feed).await["seq"], seq);
    }
    app.post_adjustment(id, 5, "live").await;
    let live = next_json(&mut feed).await;
    assert_eq!(
        (live["seq"].as_i64(), live["amount_micros"].as_i64()),
        (Some(1_501), Some(5))
    );
    assert_eq!(slow_closes(&app).await, 0);
}

on_both_stores!(a_slow_reader_reconnecting_as_told_gets_every_change_once_in_order);
/// 3 000 changes written while a client with a 4 KiB receive buffer reads
/// one frame every 20 ms, with a feed queue of 8: it is waited for rather
/// than dropped, and whenever it is told to reconnect it does, from where
/// it was told; it receives every change once, in order, and the
/// reconnections are few (printed).
async fn a_slow_reader_reconnecting_as_told_gets_every_change_once_in_order() {
    let directory = fresh_directory();
    let settings = feed_settings(&directory, 8);
    let app = TestApp::spawn_with(directory, settings).await;
    let (id, token) = account_with_token(&app, "+14155553090").await;
    app.post_adjustment(id, 1_000_000, "opening").await;
    let reading = Reading {
        every: Duration::from_millis(20),
        stall: None,
        until_seq: 3_001,
    };
    let app_ref = &app;
    let token_ref = &token;
    let reader = async move {
        let mut seqs = Vec::new();
        let mut reconnects = 0;
        // From after the opening credit, so that every change is expected.
        let mut path = format!("/v1/accounts/{id}/feed?since=1");
        loop {
            let mut client = SlowClient::connect(app_ref, &path, token_ref).await;
            match client.read(&reading, &mut seqs).await {
                None => return (seqs, reconnects),
                Some(SlowEnd::Closed { code: 1008, reason }) => {
                    let since = reason
                        .strip_prefix("too slow: reconnect with ?since=")
                        .unwrap_or_else(|| panic!("closed: {reason}"));
                    // Told to resume from the last change received, or
                    // from where it started (1) if none came yet.
                    assert_eq!(since.parse::<i64>().unwrap(), *seqs.last().unwrap_or(&1));
                    path = format!("/v1/accounts/{id}/feed?since={since}");
                }
                Some(other) => panic!("the feed ended with {other:?} after {:?}", seqs.last()),
            }
            reconnects += 1;
            assert!(
                reconnects <= 20,
                "reconnected {reconnects} times and is at {:?}",
                seqs.last()
            );
        }
    };
    let ((), (seqs, reconnects)) =
        futures_util::future::join(write_changes(&app, id, 3_000, "slow"), reader).await;
    println!("a slow reader took 3 000 changes with {reconnects} reconnections");
    assert_every_change_once_in_order(&seqs, 2, 3_001);
}

on_both_stores!(a_client_that_stops_reading_is_closed_with_where_to_resume);
/// A client that reads 20 changes and then nothing for 12 s (more than the
/// 10 s it is given) while changes keep coming is closed with 1008 and the
/// `seq` of the last change it received, counted in the metric; resuming
/// from there goes on without a gap.
async fn a_client_that_stops_reading_is_closed_with_where_to_resume() {
    let directory = fresh_directory();
    let settings = feed_settings(&directory, 8);
    let app = TestApp::spawn_with(directory, settings).await;
    let (id, token) = account_with_token(&app, "+14155553091").await;
    app.post_adjustment(id, 1_000_000, "opening").await;
    // From after the opening credit, so that every change is expected.
    let mut client =
        SlowClient::connect(&app, &format!("/v1/accounts/{id}/feed?since=1"), &token).await;
    let reading = Reading {
        every: Duration::ZERO,
        stall: Some((20, Duration::from_secs(12))),
        until_seq: i64::MAX,
    };
    let mut seqs = Vec::new();
    let ((), end) = futures_util::future::join(
        write_changes(&app, id, 400, "stalled"),
        client.read(&reading, &mut seqs),
    )
    .await;
    let last_seq = *seqs.last().unwrap();
    assert_every_change_once_in_order(&seqs, 2, last_seq);
    match end {
        Some(SlowEnd::Closed { code, reason }) => {
            assert_eq!(code, 1008, "{reason}");
            assert_eq!(
                reason,
                format!("too slow: reconnect with ?since={last_seq}")
            );
        }
        other => panic!("ended with {other:?} after seq {last_seq}"),
    }
    assert!(last_seq < 401, "closed before the end: {last_seq}");
    assert_eq!(slow_closes(&app).await, 1);
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed?since={last_seq}"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    next_json(&mut feed).await; // the snapshot
    assert_eq!(next_json(&mut feed).await["seq"], last_seq + 1);
}

/// Waits (up to 5 s) for the feed's close frame, answering pings and
/// skipping changes on the way: its code and reason.
pub(crate) async fn close_of(connection: &mut Connection) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = actix_rt::time::timeout(left, connection.next())
            .await
            .expect("a close frame within 5 s")
            .expect("a close frame, not the end of the stream")
            .unwrap();
        match frame {
            ws::Frame::Close(reason) => {
                let reason = reason.expect("a close reason");
                return (
                    u16::from(reason.code),
                    reason.description.unwrap_or_default(),
                );
            }
            ws::Frame::Ping(bytes) => connection.send(ws::Message::Pong(bytes)).await.unwrap(),
            _ => {}
        }
    }
}

on_both_stores!(revoking_a_token_closes_its_feeds_and_voids_its_tickets);
/// Revoking closes the feeds a token opened (from the server, and from
/// another process: the CLI), and a ticket bought with it before stops
/// working; rotating does the same, and the new token opens a feed.
async fn revoking_a_token_closes_its_feeds_and_voids_its_tickets() {
    let app = TestApp::spawn().await;
    let (id, token) = account_with_token(&app, "+14155553095").await;
    let path = format!("/v1/accounts/{id}/feed");
    let mut feed = open(&app, &path, &["sms-credit-feed", &token])
        .await
        .unwrap();
    next_json(&mut feed).await;
    let (status, ticket) = app
        .request(
            "POST",
            &format!("/v1/accounts/{id}/feed-tickets"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let ticket = ticket["ticket"].as_str().unwrap().to_string();

    let (status, _) = app
        .request(
            "DELETE",
            &format!("/v1/admin/accounts/{id}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        close_of(&mut feed).await,
        (1008, "the token was revoked: sign in again".to_string())
    );
    let refused = open(&app, &format!("{path}?ticket={ticket}"), &[]).await;
    assert_eq!(
        refused.err(),
        Some(StatusCode::UNAUTHORIZED),
        "a ticket of a revoked token"
    );

    // Rotation: the old token's feed closes; the new token opens one.
    let token = app.issue_token(id).await;
    let mut feed = open(&app, &path, &["sms-credit-feed", &token])
        .await
        .unwrap();
    next_json(&mut feed).await;
    let (status, rotated) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{id}/tokens/rotate"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(close_of(&mut feed).await.0, 1008);
    let fresh = rotated["token"].as_str().unwrap();
    let mut feed = open(&app, &path, &["sms-credit-feed", fresh])
        .await
        .unwrap();
    next_json(&mut feed).await;

    // Another process revokes (the CLI): the server's feed closes too.
    let cli = crate::helpers::run_cli(
        &app.directory,
        &["accounts", "token", "revoke", &id.to_string()],
    );
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(close_of(&mut feed).await.0, 1008);
}

on_both_stores!(an_account_holds_at_most_ten_feeds);
async fn an_account_holds_at_most_ten_feeds() {
    let app = TestApp::spawn().await;
    let (id, token) = account_with_token(&app, "+14155553096").await;
    let path = format!("/v1/accounts/{id}/feed");
    let mut feeds = Vec::new();
    for _ in 0..10 {
        let mut feed = open(&app, &path, &["sms-credit-feed", &token])
            .await
            .unwrap();
        next_json(&mut feed).await;
        feeds.push(feed);
    }
    let refused = open(&app, &path, &["sms-credit-feed", &token]).await;
    assert_eq!(refused.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    // Another account is not held back by this one.
    let (other, other_token) = account_with_token(&app, "+14155553097").await;
    let other_path = format!("/v1/accounts/{other}/feed");
    assert!(open(&app, &other_path, &["sms-credit-feed", &other_token])
        .await
        .is_ok());
    // Closing one gives its place back.
    let mut closed = feeds.pop().unwrap();
    closed.send(ws::Message::Close(None)).await.unwrap();
    drop(closed);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open(&app, &path, &["sms-credit-feed", &token]).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the place never came back"
                );
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

on_both_stores!(a_token_revoked_during_a_long_replay_ends_the_replay);
/// A client replaying a long gap (`?since=0` over 1 500 rows) at a
/// reader's pace whose token is revoked meanwhile: the feed closes as a
/// live one would, a window's worth of rows later at most, not after the
/// whole replay.
async fn a_token_revoked_during_a_long_replay_ends_the_replay() {
    let directory = fresh_directory();
    let app = TestApp::spawn_with(directory.clone(), feed_settings(&directory, 64)).await;
    let (id, token) = account_with_token(&app, "+14155553098").await;
    write_changes(&app, id, 1_500, "long").await;
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=0"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut feed).await["seq"], 1_500, "the snapshot");
    for seq in 1..=20 {
        assert_eq!(next_json(&mut feed).await["seq"], seq);
    }
    let (status, _) = app
        .request(
            "DELETE",
            &format!("/v1/admin/accounts/{id}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Read on, at a reader's pace, until the close (bounded in all).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut rows_after = 0;
    let close = loop {
        let frame = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("the close within 30 s of the revocation")
            .expect("a close frame, not the end of the stream")
            .unwrap();
        match frame {
            ws::Frame::Text(_) => {
                rows_after += 1;
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
            ws::Frame::Ping(bytes) => feed.send(ws::Message::Pong(bytes)).await.unwrap(),
            ws::Frame::Close(reason) => break reason.expect("a close reason"),
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(
        close.description.as_deref(),
        Some("the token was revoked: sign in again")
    );
    println!("rows received after the revocation: {rows_after} (window 64)");
    assert!(
        rows_after <= 64 + 16,
        "the replay ended within a window of the revocation, not after {rows_after} more rows"
    );
}

/// Buys a ticket for an account's feed from `app` with the account's token.
async fn buy_ticket(app: &TestApp, id: i64, token: &str) -> String {
    let (status, issued) = app
        .request(
            "POST",
            &format!("/v1/accounts/{id}/feed-tickets"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    issued["ticket"].as_str().unwrap().to_string()
}

/// Buys a ticket for the admin feed from `app`.
async fn buy_admin_ticket(app: &TestApp) -> String {
    let (status, issued) = app
        .request("POST", "/v1/admin/feed-tickets", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    issued["ticket"].as_str().unwrap().to_string()
}

/// `count` instances of the app on one fresh database (on SQLite, one
/// file), as behind a load balancer, sharing `clock`.
async fn instances(count: usize, clock: &ManualClock) -> Vec<TestApp> {
    let directory = fresh_directory();
    let settings = test_settings(&directory);
    let mut apps = Vec::new();
    for _ in 0..count {
        apps.push(
            TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await,
        );
    }
    apps
}

const START_MS: i64 = 1_795_253_400_000;

on_both_stores!(a_ticket_bought_on_one_instance_opens_the_feed_on_another_once);
/// Behind a load balancer the ticket is bought from one instance and the
/// feed opened on another: it opens there, and only once, on any instance.
async fn a_ticket_bought_on_one_instance_opens_the_feed_on_another_once() {
    let apps = instances(2, &ManualClock::new(START_MS)).await;
    let (first, second) = (&apps[0], &apps[1]);
    let (id, token) = account_with_token(first, "+14155553400").await;

    let ticket = buy_ticket(first, id, &token).await;
    let path = format!("/v1/accounts/{id}/feed?ticket={ticket}");
    let mut feed = open(second, &path, &[])
        .await
        .expect("a ticket bought on the first instance opens the feed on the second");
    assert_eq!(
        next_json(&mut feed).await,
        json!({"seq": 0, "balance_micros": 0})
    );
    for (app, which) in [
        (first, "the instance that sold it"),
        (second, "the same instance"),
    ] {
        assert_eq!(
            open(app, &path, &[]).await.err(),
            Some(StatusCode::UNAUTHORIZED),
            "a used ticket opens nothing on {which}"
        );
    }
    // The feed opened with it is live: a change made on the first instance
    // reaches it on the second.
    first.post_adjustment(id, 70_000, "through-first").await;
    assert_eq!(next_json(&mut feed).await["amount_micros"], 70_000);

    // The admin's too, the other way round.
    let admin_ticket = buy_admin_ticket(second).await;
    let admin_path = format!("/v1/admin/feed?ticket={admin_ticket}");
    let mut admin = open(first, &admin_path, &[])
        .await
        .expect("an admin ticket bought on the second instance opens the admin feed on the first");
    assert_eq!(next_json(&mut admin).await, json!({"live": true}));
    for app in [first, second] {
        assert_eq!(
            open(app, &admin_path, &[]).await.err(),
            Some(StatusCode::UNAUTHORIZED),
            "a used admin ticket opens nothing"
        );
    }
}

on_both_stores!(a_ticket_redeemed_at_once_on_two_instances_opens_one_feed);
/// Two instances redeeming one ticket at the same moment (neither of them
/// the one that sold it): exactly one opens a feed, the other answers 401.
async fn a_ticket_redeemed_at_once_on_two_instances_opens_one_feed() {
    let apps = instances(3, &ManualClock::new(START_MS)).await;
    let (seller, racers) = (&apps[0], [&apps[1], &apps[2]]);
    let (id, token) = account_with_token(seller, "+14155553410").await;
    for round in 0..6 {
        let path = if round % 2 == 0 {
            let ticket = buy_ticket(seller, id, &token).await;
            format!("/v1/accounts/{id}/feed?ticket={ticket}")
        } else {
            let ticket = buy_admin_ticket(seller).await;
            format!("/v1/admin/feed?ticket={ticket}")
        };
        // Two tries on each racer, all at once.
        let tries = racers
            .iter()
            .chain(racers.iter())
            .map(|app| open(app, &path, &[]));
        let outcomes = futures_util::future::join_all(tries).await;
        let refusals: Vec<StatusCode> = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err().copied())
            .collect();
        assert_eq!(
            refusals,
            vec![StatusCode::UNAUTHORIZED; 3],
            "round {round}: of four tries on two instances, one opens the feed and the others are refused"
        );
    }
}

/// SHA-256 in hex, as the store keeps secrets.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

on_both_stores!(a_ticket_expires_after_30_seconds_on_every_instance_and_is_kept_hashed);
/// A ticket opens the feed on another instance until its 30 s are up and
/// not after; expired tickets are deleted when another is issued; the store
/// holds only the SHA-256 of tickets and of the token that bought them.
async fn a_ticket_expires_after_30_seconds_on_every_instance_and_is_kept_hashed() {
    let clock = ManualClock::new(START_MS);
    let apps = instances(2, &clock).await;
    let (first, second) = (&apps[0], &apps[1]);
    let (id, token) = account_with_token(first, "+14155553420").await;
    let on_time = buy_ticket(first, id, &token).await;
    let late = buy_ticket(first, id, &token).await;
    let feed = |ticket: &str| format!("/v1/accounts/{id}/feed?ticket={ticket}");

    clock.advance_ms(29_999);
    let mut opened = open(second, &feed(&on_time), &[])
        .await
        .expect("a ticket opens the feed on another instance until its 30 s are up");
    assert_eq!(next_json(&mut opened).await["seq"], 0);
    clock.advance_ms(1);
    for app in [second, first] {
        assert_eq!(
            open(app, &feed(&late), &[]).await.err(),
            Some(StatusCode::UNAUTHORIZED),
            "an expired ticket opens nothing"
        );
    }

    let database = &first.directory;
    assert_eq!(
        database.number("SELECT COUNT(*) FROM feed_tickets"),
        1,
        "the expired ticket waits for the next issue to be deleted"
    );
    let fresh = buy_ticket(second, id, &token).await;
    assert_eq!(
        database.number(&format!(
            "SELECT COUNT(*) FROM feed_tickets WHERE ticket_hash = '{}' AND token_hash = '{}'",
            sha256_hex(&fresh),
            sha256_hex(&token)
        )),
        1,
        "the new ticket, as hashes"
    );
    assert_eq!(
        database.number("SELECT COUNT(*) FROM feed_tickets"),
        1,
        "issuing deleted the expired ticket"
    );
    assert_eq!(
        database.number(&format!(
            "SELECT COUNT(*) FROM feed_tickets WHERE ticket_hash = '{fresh}' OR token_hash = '{token}'"
        )),
        0,
        "neither the ticket nor the token is stored as it is"
    );
}
