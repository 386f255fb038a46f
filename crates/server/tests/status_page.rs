//! The status page at `GET /`, in a real headless browser (Chromium, from the
//! distribution's packages; `.ci/run` installs it): it loads without script errors, shows
//! every store of a running three-node cluster, and its search finds the Region holding a
//! key. Without Chromium the test says so and passes, unless `SCANDIUM_REQUIRE_BROWSER`
//! is set (as `.ci/run` sets it).

#[path = "cluster/harness.rs"]
mod harness;

use harness::Cluster;
use std::process::Command;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// The page's DOM after its scripts ran (a few seconds of virtual time), the browser run
/// off the test's runtime (the cluster serves it on that runtime).
async fn rendered(browser: &str, url: String) -> String {
    let browser = browser.to_string();
    tokio::task::spawn_blocking(move || render(&browser, &url)).await.unwrap()
}

fn render(browser: &str, url: &str) -> String {
    let output = Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .output()
        .expect("the browser runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The text inside the element with `id` (the first such element's contents, tags and
/// all).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("#{id} in {dom}"));
    let open_end = start + dom[start..].find('>').unwrap() + 1;
    let tag = dom[..start].rsplit('<').next().unwrap().split_whitespace().next().unwrap();
    let close = dom[open_end..].find(&format!("</{tag}>")).unwrap();
    &dom[open_end..open_end + close]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster_and_finds_a_region_by_key() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("SCANDIUM_REQUIRE_BROWSER").is_none(),
            "SCANDIUM_REQUIRE_BROWSER is set but no Chromium is installed"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let cluster = Cluster::start(3).await;
    let raw = cluster.raw_client().await;
    raw.put(b"status".to_vec(), b"page".to_vec()).await.unwrap();
    let leader = cluster.wait_leader(cluster.region_of(b"k5"), Duration::from_secs(5)).await;
    cluster.node(leader).splitter().split_at(b"k5".to_vec()).await.unwrap();
    let region = cluster.region_of(b"k7");
    let addr = cluster.addrs[1].clone();

    let dom = rendered(browser, format!("http://{addr}/")).await;
    assert_eq!(element(&dom, "errors").trim(), "", "no script errors");
    let stores = element(&dom, "stores");
    for addr in &cluster.addrs {
        assert!(stores.contains(addr.as_str()), "store {addr} shown: {stores}");
    }
    assert!(stores.matches(">Up<").count() >= 3, "every store up: {stores}");
    assert!(element(&dom, "members").contains("leader"), "the placement leader is named");

    let dom = rendered(browser, format!("http://{addr}/?key=k7")).await;
    assert_eq!(element(&dom, "errors").trim(), "", "no script errors");
    let regions = element(&dom, "regions");
    let rows = regions.matches("<tr>").count() - 1;
    assert_eq!(rows, 1, "one Region holds k7: {regions}");
    assert!(regions.contains(&format!("<td>{region}</td>")), "Region {region}: {regions}");
    assert!(regions.contains("<td>k5</td>"), "it starts at the split key: {regions}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_api_are_small_and_paged() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_leader(cluster.region_of(b"p"), Duration::from_secs(5)).await;
    let keys: Vec<Vec<u8>> = (0..30).map(|i| format!("p{i:02}").into_bytes()).collect();
    cluster.node(leader).splitter().split_at_keys(keys).await.unwrap();
    let get = |path: &str| {
        let uri: hyper::Uri = format!("http://{}{path}", cluster.addrs[0]).parse().unwrap();
        async move {
            let response = hyper::Client::new().get(uri).await.unwrap();
            assert!(response.status().is_success());
            hyper::body::to_bytes(response.into_body()).await.unwrap()
        }
    };
    let page = get("/").await;
    assert!(page.len() < 200 * 1024, "first load {} bytes", page.len());
    assert!(std::str::from_utf8(&page).unwrap().contains("<title>Scandium</title>"));
    let first: serde_json::Value =
        serde_json::from_slice(&get("/api/v1/regions?limit=10").await).unwrap();
    let total = first["total"].as_u64().unwrap();
    assert!(total >= 31, "{first}");
    assert_eq!(first["regions"].as_array().unwrap().len(), 10);
    let last: serde_json::Value = serde_json::from_slice(
        &get(&format!("/api/v1/regions?limit=10&offset={}", total - 3)).await,
    )
    .unwrap();
    assert_eq!(last["regions"].as_array().unwrap().len(), 3);
    let found: serde_json::Value =
        serde_json::from_slice(&get("/api/v1/regions?key=p155").await).unwrap();
    assert_eq!(found["total"], 1);
    assert_eq!(found["regions"][0]["start_key"], "p15", "{found}");
    cluster.shutdown().await;
}
