//! What the stack sets up on its control plane so a user can try the
//! gateway at once: a `demo` subscription for the configured models, a
//! price for each of them (so showback shows money), and one key for it. The key is kept (owner-only) in the control plane's data
//! directory, so a restart reuses it instead of minting another.

use std::path::Path;

use serde_json::json;

use maas_testkit::control_plane::ControlPlaneProcess;
use maas_testkit::private_file::write_private;

pub const DEMO_SUBSCRIPTION: &str = "demo";
pub const DEMO_OWNER: &str = "demo@localhost";

/// Illustrative prices (USD per million prompt and completion tokens): the
/// stand-in external model at an external provider's list-price level, and
/// the local models at a small internal rate for the hardware they use.
const EXTERNAL_PRICE: (&str, &str) = ("3", "15");
const LOCAL_PRICE: (&str, &str) = ("0.05", "0.1");
const KEY_FILE: &str = "demo-key";

/// The demo key: the remembered one while it is still active, else a new one.
pub fn ensure_demo(cp: &ControlPlaneProcess, models: &[String]) -> Result<String, String> {
    let admin = cp.admin_token();
    let spec = json!({
        "name": DEMO_SUBSCRIPTION,
        "models": models,
        "limits": {"requests": ["60/min"], "tokens": ["100000/hour"]},
        "max_tokens": {"cap": 512, "mode": "clamp"},
        "cost_center": "demo"
    });
    let path = format!("/maas-api/v1/subscriptions/{DEMO_SUBSCRIPTION}");
    let r = cp.call("PUT", &path, &admin, Some(&spec));
    if r.status != 200 {
        return Err(format!(
            "creating the demo subscription: {} {}",
            r.status,
            r.text()
        ));
    }
    for model in models {
        let (prompt, completion) = if model == crate::demo_provider::DEMO_EXTERNAL_MODEL {
            EXTERNAL_PRICE
        } else {
            LOCAL_PRICE
        };
        let price = json!({"currency": "USD", "prompt_per_million": prompt, "completion_per_million": completion});
        let r = cp.call(
            "PUT",
            &format!("/maas-api/v1/prices/{model}"),
            &admin,
            Some(&price),
        );
        if r.status != 200 {
            return Err(format!("pricing {model}: {} {}", r.status, r.text()));
        }
    }
    let file = cp.data_dir().join(KEY_FILE);
    if let Some(key) = remembered(cp, &admin, &file) {
        return Ok(key);
    }
    // The plaintext of any other demo key is lost with the file: revoke
    // them, so restarts never pile keys up against `max_keys_per_owner`.
    for id in active_demo_keys(cp, &admin) {
        let r = cp.call(
            "DELETE",
            &format!("/maas-api/v1/api-keys/{id}"),
            &admin,
            None,
        );
        if !(200..300).contains(&r.status) {
            return Err(format!(
                "revoking the old demo key {id}: {} {}",
                r.status,
                r.text()
            ));
        }
    }
    let body = json!({"name": "demo", "subscription": DEMO_SUBSCRIPTION, "owner": DEMO_OWNER});
    let r = cp.call("POST", "/maas-api/v1/api-keys", &admin, Some(&body));
    let key = (r.status == 201)
        .then(|| r.json()["key"].as_str().map(str::to_string))
        .flatten()
        .ok_or_else(|| format!("minting the demo key: {} {}", r.status, r.text()))?;
    write_private(&file, format!("{key}\n"))
        .map_err(|e| format!("cannot keep the demo key in {file:?}: {e}"))?;
    Ok(key)
}

/// The key in `file` if the control plane still lists it as active.
fn remembered(cp: &ControlPlaneProcess, admin: &str, file: &Path) -> Option<String> {
    let key = std::fs::read_to_string(file).ok()?.trim().to_string();
    let id = key.strip_prefix("sk-maas-")?.split('-').next()?.to_string();
    active_demo_keys(cp, admin).contains(&id).then_some(key)
}

/// Ids of the demo owner's active keys in the demo subscription.
fn active_demo_keys(cp: &ControlPlaneProcess, admin: &str) -> Vec<String> {
    let listed = cp.call(
        "GET",
        &format!("/maas-api/v1/api-keys?owner={DEMO_OWNER}"),
        admin,
        None,
    );
    let data = listed.json()["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    data.iter()
        .filter(|k| k["status"] == "active" && k["subscription"] == DEMO_SUBSCRIPTION)
        .filter_map(|k| k["id"].as_str().map(str::to_string))
        .collect()
}
