//! The command line: `serve` (the default), `verify`, and account commands
//! that work on the database file through the same core as the server.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use sms_credit_actors::accounts::{AccountStatus, Email, NewAccount, PhoneNumber};
use sms_credit_actors::billing::auto_charge::{self, AutoTopUpView};
use sms_credit_actors::billing::auto_top_up::{ConsentVia, SettingRequest};
use sms_credit_actors::billing::discounts::{normalize_code, Discount, DiscountCode};
use sms_credit_actors::billing::events::EventStatus;
use sms_credit_actors::billing::pricing::{Pricing, PricingMode};
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::messaging::reconcile;
use sms_credit_actors::rating::{quote, QuoteRequest};
use sms_credit_actors::store::{copy, DatabaseLocation, Store, StoreSettings};
use sms_credit_actors::{access_tokens, export, AccountId, Adjust, IdempotencyKey, Money};

use crate::config::{GlobalOptions, Options, Settings};
use crate::startup::{Application, Core};

#[derive(Parser, Debug)]
#[command(
    name = "sms-credit",
    version,
    about = "Sells and spends prepaid SMS credit."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    /// The server's options, when `serve` is left out.
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve {
        #[command(flatten)]
        options: Box<Options>,
    },
    /// Recompute every account from its ledger; exit 1 if any account's
    /// ledger does not sum to its snapshot or its seq has a gap.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a message will cost: segments × the destination's rate.
    Quote {
        /// The destination in international form, e.g. +14155551234.
        #[arg(long)]
        to: String,
        /// Quote the message as sent after smart encoding (look-alike characters replaced).
        #[arg(long)]
        smart: bool,
        /// Print the quote as JSON (the same fields as POST /v1/quote).
        #[arg(long)]
        json: bool,
        /// The message text.
        text: String,
    },
    /// Compare what messages were charged with what Twilio actually
    /// charged, per country and overall.
    Reconcile {
        /// Print the report as JSON (the same as GET /v1/admin/reconciliation).
        #[arg(long)]
        json: bool,
    },
    /// The Stripe events received and what became of each (applied,
    /// ignored, waiting, expired, failed), newest first.
    StripeEvents {
        /// Only events of this status.
        #[arg(long, value_parser = ["received", "applied", "ignored", "waiting", "expired", "failed"])]
        status: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print the events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the database migrations this release has and the database has
    /// not, then exit (the server applies them at start too).
    Migrate {
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Copy every row of one database into another that holds no data yet
    /// (an SQLite file into Postgres, say), then verify both. Stop the
    /// servers on the source first.
    Copy {
        /// The database to copy: a file path, sqlite://path or postgres://…
        #[arg(long)]
        from: String,
        /// The empty database to copy into (created and migrated if needed).
        #[arg(long)]
        to: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Create, show and adjust accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Show or set the pricing mode of access: launch ($29.99), rrp ($49.99) or sale.
    Pricing {
        /// The new mode: launch ($29.99), rrp ($49.99) or sale (with --sale-price); without it, the current pricing is shown.
        #[arg(value_parser = ["launch", "rrp", "sale"])]
        mode: Option<String>,
        /// The sale price in dollars, with the sale mode (e.g. 19.99).
        #[arg(long)]
        sale_price: Option<String>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Create, list, activate and deactivate discount codes.
    #[command(subcommand)]
    DiscountCodes(DiscountCodesCommand),
}

#[derive(Subcommand, Debug)]
pub enum DiscountCodesCommand {
    /// Create a code: --percent N or --amount DOLLARS off, optionally --max-uses N.
    Create {
        /// The code customers type (letters, digits, '-' and '_'; case does not matter).
        code: String,
        /// A percentage off the price of access (1 to 100).
        #[arg(long, conflicts_with = "amount", required_unless_present = "amount")]
        percent: Option<i64>,
        /// A fixed amount off, in dollars (e.g. 5 or 7.50).
        #[arg(long)]
        amount: Option<String>,
        /// How many times the code may be used in all (no limit without it).
        #[arg(long)]
        max_uses: Option<i64>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// List every code with its uses.
    List {
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Let a code be used again.
    Activate {
        /// The code.
        code: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Stop a code from being used.
    Deactivate {
        /// The code.
        code: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Create an active account with a zero balance.
    Create {
        /// Phone number in E.164 form, e.g. +14155551234.
        #[arg(long)]
        phone: String,
        /// The holder's email address (optional).
        #[arg(long)]
        email: Option<String>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Show an account, its balance and its newest ledger rows.
    Show {
        /// The account.
        id: i64,
        /// How many of the newest ledger rows to show.
        #[arg(long, default_value_t = 20)]
        transactions: i64,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// List accounts, or search them by part of a phone number or email.
    List {
        /// Only accounts whose phone or email contains this (or whose id it is).
        #[arg(long)]
        search: Option<String>,
        /// Accounts after this id (paging).
        #[arg(long, default_value_t = 0)]
        after_id: i64,
        /// At most this many accounts.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Write an account's whole ledger as CSV to standard output.
    Export {
        /// The account.
        id: i64,
    },
    /// Issue, revoke or rotate an account's sign-in tokens.
    Token {
        /// issue: a new token (shown once); revoke: every token; rotate: revoke all, issue one.
        #[arg(value_parser = ["issue", "revoke", "rotate"])]
        action: String,
        /// The account.
        id: i64,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Show an account's auto top-up, or turn it on or off and change its terms
    /// (a running server's actors learn of it within 30 s).
    AutoTopUp {
        /// The account.
        id: i64,
        /// Turn it on (needs a saved card and an active account; recorded as the admin's consent).
        #[arg(long, conflicts_with = "off")]
        on: bool,
        /// Turn it off.
        #[arg(long)]
        off: bool,
        /// Top up when a debit leaves the balance below this many dollars (e.g. 2.00).
        #[arg(long)]
        threshold: Option<String>,
        /// Charge this many whole dollars each time (at least 10).
        #[arg(long)]
        amount: Option<String>,
        /// Charge at most this many dollars a calendar month (UTC).
        #[arg(long)]
        cap: Option<String>,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Adjust a balance by a signed amount of dollars (e.g. 5, -1.50).
    Adjust {
        /// The account.
        id: i64,
        /// Dollars to add (negative to take away), e.g. 5 or -1.50.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Why: kept in the ledger row's description.
        #[arg(long)]
        reason: String,
        /// Names this adjustment so that running the command again does not apply it twice.
        #[arg(long)]
        idempotency_key: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// Whether the command is `serve` (the default).
    pub fn serves(&self) -> bool {
        matches!(self.command, None | Some(Command::Serve { .. }))
    }
}

/// Logs go to standard error; `RUST_LOG` filters them (default `info` for
/// the server; `warn` for other commands, whose output is their own).
pub fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> ExitCode {
    let (options, command) = match cli.command {
        Some(Command::Serve { options }) => (
            options.with(cli.global, cli.options),
            Command::Serve {
                options: Box::default(),
            },
        ),
        other => (
            cli.options.with(cli.global, Options::default()),
            other.unwrap_or(Command::Serve {
                options: Box::default(),
            }),
        ),
    };
    let settings = match Settings::load(options) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        Command::Serve { .. } => serve(settings),
        Command::Verify { json } => return verify_command(&settings, json),
        Command::Quote {
            to,
            smart,
            json,
            text,
        } => quote_command(&settings, &to, &text, smart, json),
        Command::Accounts(command) => accounts(&settings, command),
        Command::Reconcile { json } => reconcile_command(&settings, json),
        Command::StripeEvents {
            status,
            limit,
            json,
        } => stripe_events_command(&settings, status, limit, json),
        Command::Migrate { json } => migrate_command(&settings, json),
        Command::Copy { from, to, json } => copy_command(&from, &to, json),
        Command::Pricing {
            mode,
            sale_price,
            json,
        } => pricing_command(&settings, mode, sale_price, json),
        Command::DiscountCodes(command) => discount_codes_command(&settings, command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    let listener = TcpListener::bind(&settings.bind)
        .map_err(|error| format!("cannot listen on {}: {error}", settings.bind))?;
    actix_rt::System::new().block_on(async move {
        let application =
            Application::build(settings, listener).map_err(|error| error.to_string())?;
        application
            .run_until_stopped()
            .await
            .map_err(|error| error.to_string())
    })
}

fn verify_command(settings: &Settings, as_json: bool) -> ExitCode {
    let report = with_store(settings, |store| async move {
        store
            .ledger()
            .verify()
            .await
            .map_err(|error| error.to_string())
    });
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if as_json {
        println!("{}", json!(report));
    } else {
        for problem in &report.problems {
            println!("PROBLEM {}", json!(problem));
        }
        println!(
            "checked {} accounts and {} transactions: {}",
            report.accounts_checked,
            report.transactions_checked,
            if report.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn quote_command(
    settings: &Settings,
    to: &str,
    text: &str,
    smart: bool,
    as_json: bool,
) -> Result<(), String> {
    let request = QuoteRequest {
        to,
        body: text,
        smart_encoding: smart,
    };
    let quoted = quote(request, &settings.rates).map_err(|error| error.to_string())?;
    if as_json {
        println!("{}", json!(quoted));
        return Ok(());
    }
    let plural = |count: u32| if count == 1 { "segment" } else { "segments" };
    println!(
        "{} ({}): {} {}, {}, at {} each = {}{}",
        quoted.to,
        quoted.country,
        quoted.segments,
        plural(quoted.segments),
        quoted.encoding,
        Money::from_micros(quoted.price_per_segment_micros).precise(),
        quoted.total().precise(),
        if quoted.smart_encoding_applied {
            " (smart encoded)"
        } else {
            ""
        }
    );
    println!(
        "$10 buys {} segments to {}",
        quoted.segments_per_10_dollars, quoted.country
    );
    let smart_quote = &quoted.smart_encoding;
    if !quoted.smart_encoding_applied && smart_quote.replacements > 0 {
        println!(
            "smart encoding would send {} {}, {}, for {} (saves {}; {} characters replaced)",
            smart_quote.segments,
            plural(smart_quote.segments),
            smart_quote.encoding,
            Money::from_micros(smart_quote.total_micros).precise(),
            Money::from_micros(smart_quote.saved_micros).precise(),
            smart_quote.replacements
        );
    }
    Ok(())
}

fn reconcile_command(settings: &Settings, as_json: bool) -> Result<(), String> {
    let report = with_store(settings, |store| async move {
        reconcile::report_from(&store)
            .await
            .map_err(|error| error.to_string())
    })?;
    if as_json {
        println!("{}", json!(report));
        return Ok(());
    }
    let margin = |basis_points: Option<i64>| {
        basis_points.map_or("n/a".to_string(), |points| {
            format!("{}.{:02}%", points / 100, (points % 100).abs())
        })
    };
    let line = |name: &str, line: &reconcile::ReconciliationLine| {
        println!(
            "{name:<8} {:>8} {:>9} {:>14} {:>14} {:>14} {:>8}",
            line.messages,
            line.segments,
            Money::from_micros(line.charged_micros).precise(),
            Money::from_micros(line.expected_carrier_cost_micros).precise(),
            Money::from_micros(line.actual_carrier_cost_micros).precise(),
            margin(line.margin_basis_points)
        );
    };
    println!(
        "{:<8} {:>8} {:>9} {:>14} {:>14} {:>14} {:>8}",
        "country", "messages", "segments", "charged", "expected cost", "actual cost", "margin"
    );
    for (country, country_line) in &report.by_country {
        line(country, country_line);
    }
    line("all", &report.overall);
    line("service", &report.service);
    for (status, auto) in &report.auto_top_ups {
        println!(
            "auto top-ups {status}: {} for {}",
            auto.attempts,
            Money::from_micros(auto.amount_micros)
        );
    }
    for mismatch in &report.mismatches {
        println!(
            "MISMATCH message {} ({}) to {}: {} per segment charged by Twilio, {} in the rate table",
            mismatch.message_id,
            mismatch.twilio_sid.as_deref().unwrap_or("-"),
            mismatch.country,
            Money::from_micros(mismatch.actual_per_segment_micros).precise(),
            Money::from_micros(mismatch.expected_per_segment_micros).precise()
        );
    }
    Ok(())
}

fn stripe_events_command(
    settings: &Settings,
    status: Option<String>,
    limit: i64,
    as_json: bool,
) -> Result<(), String> {
    let status = status.as_deref().and_then(EventStatus::parse);
    let events = with_store(settings, |store| async move {
        store
            .events()
            .list(status, limit.clamp(1, 100_000))
            .await
            .map_err(|error| error.to_string())
    })?;
    if as_json {
        println!("{}", json!({ "events": events }));
        return Ok(());
    }
    println!(
        "{:<28} {:<34} {:<8} {:<24} detail",
        "received", "event", "status", "type"
    );
    for event in events {
        println!(
            "{:<28} {:<34} {:<8} {:<24} {}",
            format_rfc3339_ms(event.received_at_ms),
            event.event_id,
            event.status.as_str(),
            event.event_type,
            event.detail.unwrap_or_default()
        );
    }
    Ok(())
}

fn migrate_command(settings: &Settings, as_json: bool) -> Result<(), String> {
    let applied = Store::migrate(&settings.database).map_err(|error| error.to_string())?;
    if as_json {
        println!(
            "{}",
            json!({"database": settings.database.to_string(), "applied": applied})
        );
        return Ok(());
    }
    if applied.is_empty() {
        println!("{}: up to date", settings.database);
    }
    for name in applied {
        println!("{}: applied {name}", settings.database);
    }
    Ok(())
}

fn copy_command(from: &str, to: &str, as_json: bool) -> Result<(), String> {
    let parse = |name: &str, text: &str| {
        DatabaseLocation::parse(text).map_err(|error| format!("--{name}: {error}"))
    };
    let (source, target) = (parse("from", from)?, parse("to", to)?);
    if source == target {
        return Err("--from and --to are the same database".to_string());
    }
    if let Some(path) = source.sqlite_path() {
        if !path.exists() {
            return Err(format!("--from: {} does not exist", path.display()));
        }
    }
    actix_rt::System::new().block_on(async move {
        let open = |location: &DatabaseLocation| {
            Store::open(&StoreSettings::new(location.clone()))
                .map_err(|error| format!("{location}: {error}"))
        };
        let (source_store, target_store) = (open(&source)?, open(&target)?);
        let report = copy::copy(&source_store, &target_store, SystemClock.now_ms())
            .await
            .map_err(|error| error.to_string())?;
        if as_json {
            let tables: serde_json::Map<String, Value> = report
                .tables
                .iter()
                .map(|(table, rows)| (table.to_string(), json!(rows)))
                .collect();
            println!(
                "{}",
                json!({"from": source.to_string(), "to": target.to_string(), "tables": tables,
                       "accounts": report.target.accounts_checked,
                       "transactions": report.target.transactions_checked})
            );
            return Ok(());
        }
        for (table, rows) in &report.tables {
            println!("{table:<24} {rows:>10} rows");
        }
        println!(
            "copied {source} to {target}; verify is clean on both: {} accounts, {} transactions",
            report.target.accounts_checked, report.target.transactions_checked
        );
        Ok(())
    })
}

fn pricing_command(
    settings: &Settings,
    mode: Option<String>,
    sale_price: Option<String>,
    as_json: bool,
) -> Result<(), String> {
    let show = |pricing: &Pricing| {
        if as_json {
            println!(
                "{}",
                json!({"mode": pricing.mode, "price_micros": pricing.price().micros(), "price": pricing.price().to_string()})
            );
        } else {
            println!("pricing: {} at {}", pricing.mode.as_str(), pricing.price());
        }
    };
    let Some(mode) = mode else {
        let current = with_store(settings, |store| async move {
            store
                .billing()
                .pricing()
                .await
                .map_err(|error| error.to_string())
        })?;
        show(&current);
        return Ok(());
    };
    let mode = PricingMode::parse(&mode).ok_or("the mode is launch, rrp or sale")?;
    let sale_price = sale_price
        .map(|text| Money::parse_dollars(&text))
        .transpose()
        .map_err(|error| error.to_string())?;
    let new_pricing = Pricing::new(mode, sale_price)?;
    with_store(settings, |store| async move {
        store
            .billing()
            .set_pricing(new_pricing, SystemClock.now_ms())
            .await
            .map_err(|error| error.to_string())?;
        show(&new_pricing);
        Ok(())
    })
}

/// One discount code, for people.
fn print_code(code: &DiscountCode) {
    let off = match code.discount {
        Discount::Percent { percent } => format!("{percent}%"),
        Discount::Fixed { amount } => amount.to_string(),
    };
    println!(
        "{:<20} {:<12} {:>6} {:>8}  {}",
        code.code,
        off,
        code.current_uses,
        code.max_uses.map_or("-".to_string(), |max| max.to_string()),
        if code.active { "yes" } else { "no" }
    );
}

fn discount_codes_command(
    settings: &Settings,
    command: DiscountCodesCommand,
) -> Result<(), String> {
    match command {
        DiscountCodesCommand::List { json: as_json } => {
            let codes = with_store(settings, |store| async move {
                store
                    .billing()
                    .discount_codes()
                    .await
                    .map_err(|error| error.to_string())
            })?;
            if as_json {
                println!("{}", json!(codes));
                return Ok(());
            }
            println!(
                "{:<20} {:<12} {:>6} {:>8}  active",
                "code", "off", "uses", "max"
            );
            for code in codes {
                print_code(&code);
            }
            Ok(())
        }
        DiscountCodesCommand::Create {
            code,
            percent,
            amount,
            max_uses,
            json: as_json,
        } => {
            let code = normalize_code(&code)?;
            let discount = match (percent, amount) {
                (Some(percent), None) => Discount::new_percent(percent)?,
                (None, Some(amount)) => Discount::new_fixed(
                    Money::parse_dollars(&amount).map_err(|error| error.to_string())?,
                )?,
                _ => return Err("give --percent N or --amount DOLLARS".to_string()),
            };
            if max_uses.is_some_and(|uses| uses < 1) {
                return Err("--max-uses must be at least 1".to_string());
            }
            with_store(settings, |store| async move {
                let created = store
                    .billing()
                    .create_discount_code(code, discount, max_uses, SystemClock.now_ms())
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or("that code exists already")?;
                if as_json {
                    println!("{}", json!(created));
                } else {
                    print_code(&created);
                }
                Ok(())
            })
        }
        DiscountCodesCommand::Activate {
            ref code,
            json: as_json,
        }
        | DiscountCodesCommand::Deactivate {
            ref code,
            json: as_json,
        } => {
            let active = matches!(command, DiscountCodesCommand::Activate { .. });
            let code = normalize_code(code)?;
            with_store(settings, |store| async move {
                store
                    .billing()
                    .set_discount_code_active(code.clone(), active)
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or("there is no such code")?;
                if as_json {
                    println!("{}", json!({"code": code, "active": active}));
                } else {
                    println!("{code}: {}", if active { "active" } else { "inactive" });
                }
                Ok(())
            })
        }
    }
}

fn accounts(settings: &Settings, command: AccountsCommand) -> Result<(), String> {
    match command {
        AccountsCommand::Create {
            phone,
            email,
            json: as_json,
        } => {
            let new_account = NewAccount {
                phone: PhoneNumber::parse(&phone).map_err(|error| error.to_string())?,
                email: email
                    .as_deref()
                    .map(Email::parse)
                    .transpose()
                    .map_err(|error| error.to_string())?,
                status: AccountStatus::Active,
            };
            with_store(settings, |store| async move {
                let account = store
                    .accounts()
                    .create(new_account, SystemClock.now_ms())
                    .await
                    .map_err(|error| error.to_string())?;
                if as_json {
                    println!(
                        "{}",
                        json!({"id": account.id, "phone": account.phone, "status": account.status})
                    );
                } else {
                    println!(
                        "account {} created: {} ({})",
                        account.id,
                        account.phone,
                        account.status.as_str()
                    );
                }
                Ok(())
            })
        }
        AccountsCommand::Show {
            id,
            transactions,
            json: as_json,
        } => {
            let account_id = AccountId(id);
            let (account, entries) = with_store(settings, |store| async move {
                let account = store
                    .accounts()
                    .get(account_id)
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or_else(|| format!("account {id} does not exist"))?;
                let entries = store
                    .ledger()
                    .latest_entries(account_id, transactions.clamp(0, 10_000))
                    .await
                    .map_err(|error| error.to_string())?;
                Ok((account, entries))
            })?;
            if as_json {
                println!("{}", json!({"account": account, "transactions": entries}));
                return Ok(());
            }
            println!(
                "account {} {} ({}) balance {} ({} micro-dollars) seq {}",
                account.id,
                account.phone,
                account.status.as_str(),
                account.balance,
                account.balance.micros(),
                account.seq
            );
            for entry in entries.iter().rev() {
                println!(
                    "  #{:<6} {} {:<10} {:>14} -> {:>14}  {}  [{}]",
                    entry.seq,
                    format_rfc3339_ms(entry.created_at_ms),
                    entry.kind.as_str(),
                    entry.amount.micros(),
                    entry.balance_after.micros(),
                    entry.description,
                    entry.idempotency_key
                );
            }
            Ok(())
        }
        AccountsCommand::List {
            search,
            after_id,
            limit,
            json: as_json,
        } => {
            let accounts = with_store(settings, |store| async move {
                store
                    .accounts()
                    .list(search, after_id, limit.clamp(1, 100_000))
                    .await
                    .map_err(|error| error.to_string())
            })?;
            if as_json {
                println!("{}", json!(accounts));
                return Ok(());
            }
            println!(
                "{:<8} {:<16} {:<8} {:>12}  email",
                "id", "phone", "status", "balance"
            );
            for account in &accounts {
                println!(
                    "{:<8} {:<16} {:<8} {:>12}  {}",
                    account.id,
                    account.phone,
                    account.status.as_str(),
                    account.balance.to_string(),
                    account.email.as_ref().map_or("", |email| email.as_str())
                );
            }
            Ok(())
        }
        AccountsCommand::Export { id } => {
            let account_id = AccountId(id);
            with_store(settings, |store| async move {
                store
                    .accounts()
                    .get(account_id)
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or_else(|| format!("account {id} does not exist"))?;
                let mut out = std::io::stdout().lock();
                let mut write = |text: &str| {
                    std::io::Write::write_all(&mut out, text.as_bytes())
                        .map_err(|error| error.to_string())
                };
                write(export::CSV_HEADER)?;
                let mut after_seq = 0;
                loop {
                    let page = store
                        .ledger()
                        .entries_after(account_id, after_seq, 1000)
                        .await
                        .map_err(|error| error.to_string())?;
                    for entry in &page {
                        write(&export::csv_row(entry))?;
                        after_seq = entry.seq;
                    }
                    if page.len() < 1000 {
                        return Ok(());
                    }
                }
            })
        }
        AccountsCommand::Token {
            action,
            id,
            json: as_json,
        } => {
            let account_id = AccountId(id);
            let now_ms = SystemClock.now_ms();
            let missing = || format!("account {id} does not exist");
            let (revoked, token) = with_store(settings, |store| async move {
                let answer = match action.as_str() {
                    "issue" => access_tokens::issue(&store, account_id, now_ms)
                        .await
                        .map_err(|error| error.to_string())?
                        .map(|token| (0, Some(token))),
                    "rotate" => access_tokens::rotate(&store, account_id, now_ms)
                        .await
                        .map_err(|error| error.to_string())?
                        .map(|(revoked, token)| (revoked, Some(token))),
                    _ => {
                        let exists = store
                            .accounts()
                            .get(account_id)
                            .await
                            .map_err(|error| error.to_string())?
                            .is_some();
                        if exists {
                            let revoked = store
                                .tokens()
                                .revoke_all(account_id, now_ms)
                                .await
                                .map_err(|error| error.to_string())?;
                            Some((revoked, None))
                        } else {
                            None
                        }
                    }
                };
                answer.ok_or_else(missing)
            })?;
            if as_json {
                println!(
                    "{}",
                    json!({"account_id": account_id, "token": token, "revoked": revoked})
                );
            } else {
                match &token {
                    Some(token) => println!(
                        "account {account_id}: token {token} (shown once; {revoked} revoked)"
                    ),
                    None => println!("account {account_id}: {revoked} tokens revoked"),
                }
            }
            Ok(())
        }
        AccountsCommand::AutoTopUp {
            id,
            on,
            off,
            threshold,
            amount,
            cap,
            json: as_json,
        } => {
            let dollars = |name: &str, text: Option<String>| {
                text.map(|text| {
                    Money::parse_dollars(&text).map_err(|error| format!("--{name}: {error}"))
                })
                .transpose()
            };
            let request = SettingRequest {
                enabled: if on {
                    Some(true)
                } else if off {
                    Some(false)
                } else {
                    None
                },
                threshold: dollars("threshold", threshold)?,
                amount: dollars("amount", amount)?,
                monthly_cap: dollars("cap", cap)?,
            };
            let changes = request.enabled.is_some()
                || request.threshold.is_some()
                || request.amount.is_some()
                || request.monthly_cap.is_some();
            let account_id = AccountId(id);
            let now_ms = SystemClock.now_ms();
            let shown = with_store(settings, |store| async move {
                if changes {
                    auto_charge::change(&store, account_id, request, ConsentVia::Admin, now_ms)
                        .await
                        .map_err(|error| error.to_string())?;
                }
                auto_charge::view(&store, account_id, now_ms)
                    .await
                    .map_err(|error| error.to_string())
            })?;
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shown).map_err(|error| error.to_string())?
                );
            } else {
                print_auto_top_up(account_id, &shown);
            }
            Ok(())
        }
        AccountsCommand::Adjust {
            id,
            amount,
            reason,
            idempotency_key,
            json: as_json,
        } => {
            let adjustment = Adjust {
                amount: Money::parse_dollars(&amount).map_err(|error| error.to_string())?,
                idempotency_key: IdempotencyKey::from_caller(&idempotency_key)
                    .map_err(|error| error.to_string())?,
                reason,
            };
            with_core(settings, |core| async move {
                let receipt = core
                    .registry
                    .send(AccountId(id), adjustment)
                    .await
                    .map_err(|error| error.to_string())?;
                if as_json {
                    println!(
                        "{}",
                        json!({
                            "seq": receipt.entry.seq,
                            "amount_micros": receipt.entry.amount.micros(),
                            "balance_after_micros": receipt.entry.balance_after.micros(),
                            "replayed": receipt.replayed,
                        })
                    );
                } else {
                    println!(
                        "account {id}: {} (ledger #{}), balance {}{}",
                        if receipt.entry.amount.is_positive() {
                            format!("+{}", receipt.entry.amount)
                        } else {
                            receipt.entry.amount.to_string()
                        },
                        receipt.entry.seq,
                        receipt.entry.balance_after,
                        if receipt.replayed {
                            " (already applied: nothing changed)"
                        } else {
                            ""
                        }
                    );
                }
                Ok(())
            })
        }
    }
}

/// An account's auto top-up, for people.
fn print_auto_top_up(account_id: AccountId, view: &AutoTopUpView) {
    let money = Money::from_micros;
    println!(
        "account {account_id} auto top-up {}: below {} charge {} (at most {} a month; {} this month)",
        if view.enabled { "on" } else { "off" },
        money(view.threshold_micros),
        money(view.amount_micros),
        money(view.monthly_cap_micros),
        money(view.month_charged_micros),
    );
    match &view.card {
        Some(card) => println!(
            "  card: {} ending {} (expires {:02}/{})",
            card.brand, card.last4, card.exp_month, card.exp_year
        ),
        None => println!("  card: none saved"),
    }
    if let Some(consent) = &view.consent {
        println!(
            "  turned on {} via {}: \"{}\"",
            format_rfc3339_ms(consent.at_ms),
            consent.via.as_str(),
            consent.text
        );
    }
    if let Some(reason) = &view.paused_reason {
        println!("  turned itself off: {reason}");
    }
    println!("  failures in a row: {}", view.consecutive_failures);
    for attempt in &view.attempts {
        println!(
            "  {}  {:>10}  {}{}",
            format_rfc3339_ms(attempt.at),
            money(attempt.amount_micros).to_string(),
            attempt.status.as_str(),
            attempt
                .reason
                .as_deref()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        );
    }
}

/// Opens the store (no actors), runs `work`, and waits for its last commit.
fn with_store<T, F, Fut>(settings: &Settings, work: F) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    actix_rt::System::new().block_on(async move {
        let store = Store::open(&StoreSettings::new(settings.database.clone()))
            .map_err(|error| error.to_string())?;
        let outcome = work(store.clone()).await;
        store.flush().await.map_err(|error| error.to_string())?;
        outcome
    })
}

/// Starts the core on the database, runs `work`, and shuts the core down.
fn with_core<F, Fut>(settings: &Settings, work: F) -> Result<(), String>
where
    F: FnOnce(Arc<Core>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    actix_rt::System::new().block_on(async move {
        let core = Arc::new(
            Core::start(settings, Arc::new(SystemClock)).map_err(|error| error.to_string())?,
        );
        let outcome = work(Arc::clone(&core)).await;
        if let Ok(core) = Arc::try_unwrap(core) {
            core.shutdown().await;
        }
        outcome
    })
}
