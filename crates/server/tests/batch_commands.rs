//! `BatchCommands`: commands multiplexed over one stream are answered exactly once each,
//! with the same answers as their unary RPCs, in completion order; malformed streams end
//! with a clear status.

mod common;

use common::{context_for, start_node, tikv_grpc};
use futures::StreamExt;
use scandium_protocol::kvrpcpb;
use scandium_protocol::tikvpb::batch_commands_request::{self, request::Cmd as Req};
use scandium_protocol::tikvpb::batch_commands_response::response::Cmd as Resp;
use scandium_protocol::tikvpb::{BatchCommandsEmptyRequest, BatchCommandsRequest};
use std::collections::HashMap;
use std::time::Duration;
use tikv_client::TimestampExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn request(cmd: Req) -> batch_commands_request::Request {
    batch_commands_request::Request { cmd: Some(cmd) }
}

/// Opens a stream; returns the sender of request messages and the answers stream.
async fn open(
    node: &scandium_server::Node,
) -> (
    mpsc::Sender<BatchCommandsRequest>,
    tonic::Streaming<scandium_protocol::tikvpb::BatchCommandsResponse>,
) {
    let (sender, receiver) = mpsc::channel(16);
    let answers = tikv_grpc(node)
        .await
        .batch_commands(ReceiverStream::new(receiver))
        .await
        .expect("stream opens")
        .into_inner();
    (sender, answers)
}

/// Reads answers until `count` ids have been answered; fails on a duplicate.
async fn collect(
    answers: &mut tonic::Streaming<scandium_protocol::tikvpb::BatchCommandsResponse>,
    count: usize,
) -> (HashMap<u64, Resp>, Vec<u64>) {
    let (mut by_id, mut order) = (HashMap::new(), Vec::new());
    while by_id.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("answers arrive")
            .expect("stream is open")
            .expect("no error status");
        assert_eq!(message.request_ids.len(), message.responses.len());
        for (id, response) in message.request_ids.into_iter().zip(message.responses) {
            order.push(id);
            assert!(
                by_id.insert(id, response.cmd.expect("a command")).is_none(),
                "id {id} answered twice"
            );
        }
    }
    (by_id, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_transactional_commands_over_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let context = Some(context_for(&node, b"b"));
    let (sender, mut answers) = open(&node).await;

    // 200 raw puts in one message, answered once each.
    let puts: Vec<_> = (0..200u64)
        .map(|i| {
            request(Req::RawPut(Box::new(kvrpcpb::RawPutRequest {
                context: context.clone(),
                key: format!("b{i:03}").into_bytes(),
                value: format!("v{i}").into_bytes(),
                ..Default::default()
            })))
        })
        .collect();
    sender
        .send(BatchCommandsRequest { requests: puts, request_ids: (0..200).collect() })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 200).await;
    for (id, response) in &answered {
        match response {
            Resp::RawPut(r) => {
                assert!(r.error.is_empty() && r.region_error.is_none(), "{id}: {r:?}")
            }
            other => panic!("id {id}: unexpected {other:?}"),
        }
    }

    // Reads see the writes; ids are the client's to choose.
    let gets: Vec<_> = [7u64, 150, 999]
        .iter()
        .map(|i| {
            request(Req::RawGet(Box::new(kvrpcpb::RawGetRequest {
                context: context.clone(),
                key: format!("b{i:03}").into_bytes(),
                ..Default::default()
            })))
        })
        .collect();
    sender
        .send(BatchCommandsRequest { requests: gets, request_ids: vec![1007, 1150, 1999] })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 3).await;
    let value = |id: u64| match &answered[&id] {
        Resp::RawGet(r) => (!r.not_found).then(|| r.value.clone()),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(value(1007), Some(b"v7".to_vec()));
    assert_eq!(value(1150), Some(b"v150".to_vec()));
    assert_eq!(value(1999), None);

    // A transaction: prewrite, then a read meets the lock exactly as KvGet would report it,
    // then commit, then the read sees the value.
    let oracle =
        tikv_client::TransactionClient::new(vec![node.advertise_addr().to_string()]).await.unwrap();
    let timestamp = || async { oracle.current_timestamp().await.unwrap().version() };
    let start = timestamp().await;
    let prewrite = request(Req::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
        context: context.clone(),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: b"a1".to_vec(),
            value: b"txn".to_vec(),
            ..Default::default()
        }],
        primary_lock: b"a1".to_vec(),
        start_version: start,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    })));
    sender
        .send(BatchCommandsRequest { requests: vec![prewrite], request_ids: vec![1] })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    match &answered[&1] {
        Resp::Prewrite(r) => assert!(r.errors.is_empty() && r.region_error.is_none(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let read_at = timestamp().await;
    let get = |version: u64| {
        request(Req::Get(Box::new(kvrpcpb::GetRequest {
            context: context.clone(),
            key: b"a1".to_vec(),
            version,
        })))
    };
    sender
        .send(BatchCommandsRequest { requests: vec![get(read_at)], request_ids: vec![2] })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    match &answered[&2] {
        Resp::Get(r) => {
            let locked = r.error.as_ref().and_then(|e| e.locked.as_ref()).expect("Locked");
            assert_eq!(locked.lock_version, start);
        }
        other => panic!("unexpected {other:?}"),
    }
    let commit_ts = timestamp().await;
    let commit = request(Req::Commit(Box::new(kvrpcpb::CommitRequest {
        context: context.clone(),
        start_version: start,
        keys: vec![b"a1".to_vec()],
        commit_version: commit_ts,
        ..Default::default()
    })));
    sender
        .send(BatchCommandsRequest { requests: vec![commit], request_ids: vec![3] })
        .await
        .unwrap();
    collect(&mut answers, 1).await;
    let after = timestamp().await;
    sender
        .send(BatchCommandsRequest { requests: vec![get(after)], request_ids: vec![4] })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    match &answered[&4] {
        Resp::Get(r) => assert_eq!((r.error.is_none(), r.value.as_slice()), (true, &b"txn"[..])),
        other => panic!("unexpected {other:?}"),
    }

    // Answers come back as commands finish, not in request order.
    let slow =
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: 77, delay_time: 300 })));
    let fast = request(Req::RawGet(Box::new(kvrpcpb::RawGetRequest {
        context: context.clone(),
        key: b"b007".to_vec(),
        ..Default::default()
    })));
    sender
        .send(BatchCommandsRequest { requests: vec![slow, fast], request_ids: vec![10, 11] })
        .await
        .unwrap();
    let (answered, order) = collect(&mut answers, 2).await;
    assert_eq!(order, vec![11, 10], "the fast command is answered first");
    assert!(matches!(&answered[&10], Resp::Empty(e) if e.test_id == 77));

    // The client closing its side ends the stream once everything is answered.
    drop(sender);
    let end = tokio::time::timeout(Duration::from_secs(5), answers.next()).await.expect("ends");
    assert!(end.is_none(), "{end:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_end_with_a_status_and_unknown_commands_get_empty_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;

    // More ids than requests.
    let (sender, mut answers) = open(&node).await;
    let ping =
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: 1, delay_time: 0 })));
    sender
        .send(BatchCommandsRequest { requests: vec![ping], request_ids: vec![1, 2] })
        .await
        .unwrap();
    let status = answers.next().await.expect("an item").expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("request ids"), "{status:?}");

    // A command this server does not serve (or none at all) gets an empty answer of its
    // own, as TiKV gives, and the stream goes on: ended, it failed every other command.
    let (sender, mut answers) = open(&node).await;
    sender
        .send(BatchCommandsRequest {
            requests: vec![batch_commands_request::Request { cmd: None }],
            request_ids: vec![5],
        })
        .await
        .unwrap();
    let message = answers.next().await.expect("an item").expect("no error status");
    assert_eq!(message.request_ids, vec![5]);
    assert!(message.responses[0].cmd.is_none(), "{message:?}");
    let ping =
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: 6, delay_time: 0 })));
    sender.send(BatchCommandsRequest { requests: vec![ping], request_ids: vec![6] }).await.unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    assert!(matches!(&answered[&6], Resp::Empty(e) if e.test_id == 6));

    // The node keeps serving other streams.
    let (sender, mut answers) = open(&node).await;
    let ping =
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: 9, delay_time: 0 })));
    sender.send(BatchCommandsRequest { requests: vec![ping], request_ids: vec![9] }).await.unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    assert!(matches!(&answered[&9], Resp::Empty(e) if e.test_id == 9));
    node.stop().await;
}

/// Commands running at once are bounded per node, not only per stream: past the node's
/// limit a command waits for another to finish, whichever stream it came on. Five streams
/// fill the node with commands that take 2 s; a quick one on a sixth waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_flight_are_bounded_per_node() {
    use scandium_server::grpc::batch::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_NODE};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let slow = |id: u64| {
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: id, delay_time: 2_000 })))
    };
    let mut streams = Vec::new();
    let mut sent = 0;
    while sent <= MAX_IN_FLIGHT_PER_NODE {
        let (sender, answers) = open(&node).await;
        let ids: Vec<u64> = (sent as u64..(sent + MAX_IN_FLIGHT) as u64).collect();
        let requests = ids.iter().map(|&id| slow(id)).collect();
        sender.send(BatchCommandsRequest { requests, request_ids: ids }).await.unwrap();
        sent += MAX_IN_FLIGHT;
        streams.push((sender, answers));
    }
    // Every place taken (the gauge is the process's: other nodes' commands are quick).
    let running = || scandium_server::metrics::METRICS.batch_commands_running.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running() < MAX_IN_FLIGHT_PER_NODE as i64 {
        assert!(std::time::Instant::now() < deadline, "{} running", running());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    let (sender, mut answers) = open(&node).await;
    let ping =
        request(Req::Empty(Box::new(BatchCommandsEmptyRequest { test_id: 1, delay_time: 0 })));
    sender.send(BatchCommandsRequest { requests: vec![ping], request_ids: vec![1] }).await.unwrap();
    let (answered, _) = collect(&mut answers, 1).await;
    assert!(matches!(&answered[&1], Resp::Empty(_)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "answered in {waited:?}: past the node's limit"
    );
    drop(streams);
    node.stop().await;
}

/// Large answers finishing together go in as many messages as they need: packed into
/// one, four scans of 3 MiB each went over the 10 MiB encoding limit, which ended the
/// stream and failed every command on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_spread_over_messages() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let context = Some(context_for(&node, b"big"));
    let (sender, mut answers) = open(&node).await;
    let puts: Vec<_> = (0..3u64)
        .map(|i| {
            request(Req::RawPut(Box::new(kvrpcpb::RawPutRequest {
                context: context.clone(),
                key: format!("big{i}").into_bytes(),
                value: vec![i as u8; 1 << 20],
                ..Default::default()
            })))
        })
        .collect();
    sender.send(BatchCommandsRequest { requests: puts, request_ids: vec![0, 1, 2] }).await.unwrap();
    collect(&mut answers, 3).await;
    let scan = || {
        request(Req::RawScan(Box::new(kvrpcpb::RawScanRequest {
            context: context.clone(),
            start_key: b"big".to_vec(),
            end_key: b"bih".to_vec(),
            limit: 10,
            ..Default::default()
        })))
    };
    let scans = (0..4).map(|_| scan()).collect();
    sender
        .send(BatchCommandsRequest { requests: scans, request_ids: vec![10, 11, 12, 13] })
        .await
        .unwrap();
    let (answered, _) = collect(&mut answers, 4).await;
    for id in 10..14 {
        let Resp::RawScan(scan) = &answered[&id] else { panic!("{id}: not a scan") };
        assert_eq!(scan.kvs.len(), 3, "{id}");
    }
    node.stop().await;
}
