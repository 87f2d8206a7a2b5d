//! `maas-control-plane`: `serve` runs the control plane; the other verbs
//! administer one over its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use maas_control_plane::cli::{table, CliError, Client};
use maas_control_plane::key_lifetime::KeyLifetime;
use maas_control_plane::oidc::OidcSettings;
use maas_control_plane::serve::{serve, ServeConfig};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "maas-control-plane",
    version,
    about = "MaaS control plane: subscriptions, API keys, key sync, showback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(ServeArgs),
    /// Mint, list and revoke API keys.
    Key {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        verb: KeyVerb,
    },
    /// Create, replace and list subscriptions.
    Subscription {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        verb: SubscriptionVerb,
    },
    /// Tokens, requests and cost per subscription and model (or any
    /// grouping), or use against each subscription's limits.
    Usage {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        report: UsageArgs,
    },
    /// Set, list and remove model prices (per million tokens).
    Price {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        verb: PriceVerb,
    },
}

#[derive(Args)]
struct UsageArgs {
    /// How far back, e.g. 24h, 7d (default 24h).
    #[arg(long, default_value = "24h")]
    since: String,
    /// Comma-separated: day, subscription, model, key, owner, cost_center
    /// (default subscription,model).
    #[arg(long)]
    group_by: Option<String>,
    #[arg(long)]
    subscription: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    /// Print the API's CSV.
    #[arg(long, conflicts_with = "limits")]
    csv: bool,
    /// Use in each limit's current window instead of a report.
    #[arg(long)]
    limits: bool,
}

#[derive(Subcommand)]
enum PriceVerb {
    /// Create or replace a model's price.
    Set {
        model: String,
        /// ISO 4217 code, e.g. USD.
        #[arg(long)]
        currency: String,
        /// Per million prompt (input) tokens, e.g. 0.15.
        #[arg(long)]
        prompt: String,
        /// Per million completion (output) tokens.
        #[arg(long)]
        completion: String,
    },
    List,
    Delete {
        model: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Tokens and the default SQLite database live here.
    #[arg(long, default_value = ".cache/control-plane")]
    data_dir: PathBuf,
    /// `sqlite://FILE?mode=rwc` or `postgres://…` (default: SQLite in the data dir).
    #[arg(long, env = "MAAS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// OIDC issuer (`iss`) whose tokens the API accepts.
    #[arg(long, requires_all = ["oidc_audience", "oidc_jwks"])]
    oidc_issuer: Option<String>,
    /// The audience (`aud`) those tokens must name; with the issuer.
    #[arg(long, requires = "oidc_issuer")]
    oidc_audience: Option<String>,
    /// The issuer's JWKS, as a file; with the issuer.
    #[arg(long, requires = "oidc_issuer")]
    oidc_jwks: Option<PathBuf>,
    #[arg(long, default_value = "groups")]
    oidc_groups_claim: String,
    /// Members of this group administer the control plane (repeatable;
    /// with the issuer).
    #[arg(long, requires = "oidc_issuer")]
    oidc_admin_group: Vec<String>,
    /// A gateway's Envoy admin URL whose usage counters are sampled
    /// (repeatable: one per gateway replica).
    #[arg(long)]
    envoy_admin: Vec<String>,
    #[arg(long, default_value_t = 15)]
    usage_interval_secs: u64,
    /// The longest a minted key may live (e.g. 30d, 12h; at most 366d): a
    /// longer `expires_in` is refused, and keys minted without one get this
    /// lifetime. Bounds how long a key outlives its owner's removal from a
    /// group at the identity provider. Default: no maximum.
    #[arg(long, env = "MAAS_MAX_KEY_LIFETIME")]
    max_key_lifetime: Option<KeyLifetime>,
    /// The most keys one owner may mint in any 24 hours, revoked and
    /// expired ones included (administrators are not bound): minting and
    /// revoking in a loop would otherwise grow the key table, and every
    /// gateway's copy of it, without bound.
    #[arg(long, env = "MAAS_MAX_KEYS_MINTED_PER_DAY", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_keys_minted_per_day: u64,
}

#[derive(Args)]
struct Remote {
    #[arg(
        long,
        env = "MAAS_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:8090",
        global = true
    )]
    url: String,
    /// Default: the admin token in .cache/control-plane/admin-token.
    #[arg(long, env = "MAAS_ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum KeyVerb {
    Create {
        #[arg(long)]
        subscription: String,
        #[arg(long)]
        name: String,
        /// Seconds, or e.g. 30d, 12h.
        #[arg(long)]
        expires_in: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum SubscriptionVerb {
    /// Create or replace from a JSON file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    List,
}

const KEY_COLUMNS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("name", "NAME"),
    ("owner", "OWNER"),
    ("subscription", "SUBSCRIPTION"),
    ("status", "STATUS"),
    ("expires_at", "EXPIRES"),
];

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Key { remote, verb } => client(&remote).and_then(|c| key(&c, &remote, verb)),
        Command::Subscription { remote, verb } => {
            client(&remote).and_then(|c| subscription(&c, &remote, verb))
        }
        Command::Usage { remote, report } => {
            client(&remote).and_then(|c| usage(&c, &remote, &report))
        }
        Command::Price { remote, verb } => client(&remote).and_then(|c| price(&c, &remote, verb)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maas-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(args: ServeArgs) -> Result<(), String> {
    let oidc = match (args.oidc_issuer, args.oidc_audience, args.oidc_jwks) {
        (Some(issuer), Some(audience), Some(jwks)) => Some((
            OidcSettings {
                issuer,
                audience,
                groups_claim: args.oidc_groups_claim,
                admin_groups: args.oidc_admin_group,
            },
            jwks,
        )),
        _ => None,
    };
    let config = ServeConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        oidc,
        gateways: args.envoy_admin,
        usage_interval: std::time::Duration::from_secs(args.usage_interval_secs.max(1)),
        max_key_lifetime: args.max_key_lifetime,
        max_keys_minted_per_day: args.max_keys_minted_per_day,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(serve(config)).map_err(|e| e.to_string())
}

fn client(remote: &Remote) -> Result<Client, String> {
    let token = match &remote.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(".cache/control-plane/admin-token")
            .map(|t| t.trim().to_string())
            .map_err(|_| "no token: pass --token or set MAAS_ADMIN_TOKEN".to_string())?,
    };
    Ok(Client::new(&remote.url, &token))
}

fn print(remote: &Remote, value: &Value, human: impl FnOnce(&Value) -> String) {
    if remote.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", human(value));
    }
}

fn list(value: &Value) -> &[Value] {
    value["data"].as_array().map_or(&[], Vec::as_slice)
}

fn key(c: &Client, remote: &Remote, verb: KeyVerb) -> Result<(), String> {
    let err = |e: CliError| e.to_string();
    match verb {
        KeyVerb::Create {
            subscription,
            name,
            expires_in,
            owner,
            labels,
        } => {
            let mut label_map = serde_json::Map::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| format!("--label {l:?}: expected KEY=VALUE"))?;
                label_map.insert(k.to_string(), json!(v));
            }
            let mut body = json!({"subscription": subscription, "name": name, "labels": label_map});
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            if let Some(o) = owner {
                body["owner"] = json!(o);
            }
            let created = c
                .call("POST", "/maas-api/v1/api-keys", Some(&body))
                .map_err(err)?;
            print(remote, &created, |v| {
                format!(
                    "{}\n\nkey (shown once): {}",
                    table(std::slice::from_ref(v), KEY_COLUMNS),
                    v["key"].as_str().unwrap_or("")
                )
            });
        }
        KeyVerb::List { owner } => {
            let path = match owner {
                Some(o) => format!("/maas-api/v1/api-keys?owner={}", urlencode(&o)),
                None => "/maas-api/v1/api-keys".into(),
            };
            let keys = c.call("GET", &path, None).map_err(err)?;
            print(remote, &keys, |v| table(list(v), KEY_COLUMNS));
        }
        KeyVerb::Revoke { id } => {
            let revoked = c
                .call(
                    "DELETE",
                    &format!("/maas-api/v1/api-keys/{}", urlencode(&id)),
                    None,
                )
                .map_err(err)?;
            print(remote, &revoked, |v| {
                table(std::slice::from_ref(v), KEY_COLUMNS)
            });
        }
    }
    Ok(())
}

fn subscription(c: &Client, remote: &Remote, verb: SubscriptionVerb) -> Result<(), String> {
    let err = |e: CliError| e.to_string();
    let columns: &[(&str, &str)] = &[
        ("name", "NAME"),
        ("models", "MODELS"),
        ("limits", "LIMITS"),
        ("cost_center", "COST CENTER"),
    ];
    match verb {
        SubscriptionVerb::Apply { file } => {
            let text =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let spec: Value =
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let name = spec["name"]
                .as_str()
                .ok_or_else(|| format!("{}: `name` is required", file.display()))?;
            let stored = c
                .call(
                    "PUT",
                    &format!("/maas-api/v1/subscriptions/{}", urlencode(name)),
                    Some(&spec),
                )
                .map_err(err)?;
            print(remote, &stored, |v| table(std::slice::from_ref(v), columns));
        }
        SubscriptionVerb::List => {
            let subs = c
                .call("GET", "/maas-api/v1/subscriptions", None)
                .map_err(err)?;
            print(remote, &subs, |v| table(list(v), columns));
        }
    }
    Ok(())
}

fn usage(c: &Client, remote: &Remote, args: &UsageArgs) -> Result<(), String> {
    let err = |e: CliError| e.to_string();
    if args.limits {
        let limits = c
            .call("GET", "/maas-api/v1/usage/limits", None)
            .map_err(err)?;
        let columns: &[(&str, &str)] = &[
            ("subscription", "SUBSCRIPTION"),
            ("quantity", "QUANTITY"),
            ("limit", "LIMIT"),
            ("window_start", "WINDOW_START"),
            ("used", "USED"),
            ("remaining", "REMAINING"),
        ];
        print(remote, &limits, |v| table(list(v), columns));
        return Ok(());
    }
    // A unit is required here: a bare number reads too easily as hours.
    let since = &args.since;
    let secs = Some(since.as_str())
        .filter(|s| s.ends_with(|c: char| c.is_ascii_alphabetic()))
        .and_then(maas_control_plane::time::parse_duration_secs)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("--since {since:?}: expected e.g. 24h or 7d"))?;
    let now = maas_control_plane::time::unix_now();
    let mut path = format!("/maas-api/v1/usage?from={}&to={}", now - secs, now + 1);
    for (name, value) in [
        ("group_by", &args.group_by),
        ("subscription", &args.subscription),
        ("owner", &args.owner),
    ] {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", urlencode(v)));
        }
    }
    if args.csv {
        path.push_str("&format=csv");
        print!("{}", c.text(&path).map_err(err)?);
        return Ok(());
    }
    let rows = c.call("GET", &path, None).map_err(err)?;
    // The grouping's columns, then the tally's.
    let dims: Vec<String> = rows["group_by"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let titles: Vec<String> = dims.iter().map(|d| d.to_uppercase()).collect();
    let mut columns: Vec<(&str, &str)> = dims
        .iter()
        .zip(&titles)
        .map(|(d, t)| (d.as_str(), t.as_str()))
        .collect();
    columns.extend([
        ("requests", "REQUESTS"),
        ("prompt_tokens", "PROMPT"),
        ("completion_tokens", "COMPLETION"),
        ("total_tokens", "TOTAL"),
        ("cost", "COST"),
    ]);
    print(remote, &rows, |v| {
        let currency = v["currency"]
            .as_str()
            .map_or(String::new(), |c| format!("\n(cost in {c})"));
        format!("{}{currency}", table(list(v), &columns))
    });
    Ok(())
}

fn price(c: &Client, remote: &Remote, verb: PriceVerb) -> Result<(), String> {
    let err = |e: CliError| e.to_string();
    let columns: &[(&str, &str)] = &[
        ("model", "MODEL"),
        ("currency", "CURRENCY"),
        ("prompt_per_million", "PROMPT/1M"),
        ("completion_per_million", "COMPLETION/1M"),
    ];
    match verb {
        PriceVerb::Set {
            model,
            currency,
            prompt,
            completion,
        } => {
            let body = json!({"currency": currency, "prompt_per_million": prompt, "completion_per_million": completion});
            let stored = c
                .call(
                    "PUT",
                    &format!("/maas-api/v1/prices/{}", urlencode(&model)),
                    Some(&body),
                )
                .map_err(err)?;
            print(remote, &stored, |v| table(std::slice::from_ref(v), columns));
        }
        PriceVerb::List => {
            let prices = c.call("GET", "/maas-api/v1/prices", None).map_err(err)?;
            print(remote, &prices, |v| table(list(v), columns));
        }
        PriceVerb::Delete { model } => {
            let deleted = c
                .call(
                    "DELETE",
                    &format!("/maas-api/v1/prices/{}", urlencode(&model)),
                    None,
                )
                .map_err(err)?;
            print(remote, &deleted, |_| format!("price of {model} removed"));
        }
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
