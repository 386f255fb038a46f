//! The README's example of an application test against an in-process node, verbatim
//! (`the_readme_shows_this_example` checks that it still is).

// README example start
#[tokio::test]
async fn stores_and_reads_back() {
    let node = scandium::testing::Node::start().expect("node starts");
    let endpoints = vec![node.addr().to_owned()];

    let raw = tikv_client::RawClient::new(endpoints.clone()).await.unwrap();
    raw.put("greeting".to_owned(), "hello".to_owned()).await.unwrap();
    assert_eq!(raw.get("greeting".to_owned()).await.unwrap(), Some(b"hello".to_vec()));

    let txns = tikv_client::TransactionClient::new(endpoints).await.unwrap();
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put("account".to_owned(), "42".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
} // the node stops, and its data is deleted, when `node` is dropped

// README example end

#[test]
fn the_readme_shows_this_example() {
    let this = include_str!("readme_example.rs");
    let start = this.find("// README example start\n").unwrap() + "// README example start\n".len();
    let end = this.find("\n// README example end").unwrap() + 1;
    let example = &this[start..end];
    let readme = include_str!("../../../README.md");
    assert!(readme.contains(example), "README.md must show, verbatim:\n{example}");
}

#[test]
fn nodes_start_from_synchronous_code_and_each_has_its_own_data() {
    let first = scandium::testing::Node::start().unwrap();
    let second = scandium::testing::Node::start().unwrap();
    assert_ne!(first.addr(), second.addr());
    drop(first);
    let on_disk = scandium::testing::Node::start_on_disk().unwrap();
    let dir = on_disk.dir().to_path_buf();
    assert!(dir.join("data").is_dir(), "a node on disk keeps its data in the directory");
    drop(on_disk);
    assert!(!dir.exists(), "the data is deleted with the node");
}

#[tokio::test]
async fn a_node_on_disk_serves_transactions_too() {
    let node = scandium::testing::Node::start_on_disk().unwrap();
    let txns = tikv_client::TransactionClient::new(vec![node.addr().to_owned()]).await.unwrap();
    let mut txn = txns.begin_pessimistic().await.unwrap();
    assert_eq!(txn.get_for_update("k".to_owned()).await.unwrap(), None);
    txn.put("k".to_owned(), "v".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
}
