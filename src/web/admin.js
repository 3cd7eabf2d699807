// The operator's console (served as /admin.js: the page's CSP allows no
// inline script). Signed in with the admin token, kept in sessionStorage
// for this tab only and sent as a bearer token, never in an address.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { token: null, accountId: null, afterId: 0, query: "", socket: null, retry: null,
  refreshing: null, adjustKey: null, adjustFor: null, refundOrder: null, refundKey: null };
// Times are shown in the reader's own time zone, and say which.
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
const TOKEN_KEY = "sms-credit-admin";

// Money arrives as integer micro-dollars, shown as the server shows it:
// exactly, from the digits, with at least two decimals and no trailing zeros
// beyond them ($2.35, $0.0565, -$82.266), the dollars grouped by thousands;
// the micro-dollars on hover. A figure may come as a number (exact below
// 2^53, as every single amount is) or as the string of its digits (the
// books' sums, read with exactMicros); the whole dollars, at most 13
// digits, are exact as a number either way.
function dollars(micros, signed) {
  const text = String(micros);
  const negative = text.startsWith("-");
  const digits = (negative ? text.slice(1) : text).padStart(7, "0");
  const amount = "$" + Number(digits.slice(0, -6)).toLocaleString("en-US") + "."
    + digits.slice(-6).replace(/0+$/, "").padEnd(2, "0");
  return (negative ? "-" : signed && /[1-9]/.test(digits) ? "+" : "") + amount;
}
// A JSON answer whose `*_micros` figures are kept as the strings of their
// digits: JavaScript reads a JSON number as a double, which is exact only
// below 2^53 micro-dollars (about $9 billion), and the books' figures sum a
// whole ledger. The server answers integers only, and no other text in
// such an answer holds a quoted name followed by a colon, so the figures
// are quoted before the text is parsed.
function exactMicros(text) {
  return JSON.parse(text.replace(/("[a-z_]+_micros")\s*:\s*(-?[0-9]+)/g, '$1:"$2"'));
}
// A count with its noun: "1 account", "2 accounts".
function counted(count, one, many) {
  return count.toLocaleString("en-US") + " " + (count === 1 ? one : many);
}
function money(cell, micros, signed) {
  cell.textContent = dollars(micros, signed);
  cell.title = (typeof micros === "string" ? BigInt(micros) : micros).toLocaleString("en-US") + " micro-dollars";
  return cell;
}
// "12.50" → 12500000 micro-dollars, from the digits (no float).
function microsOf(text) {
  const match = /^\s*(-?)\$?(\d+)(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  const cents = Number(match[2]) * 100 + Number((match[3] || "0").padEnd(2, "0"));
  return (match[1] ? -1 : 1) * cents * 10000;
}
function when(text) {
  const at = Date.parse(text || "");
  if (Number.isNaN(at)) return "";
  return new Date(at).toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function key() {
  return "console-" + (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
}
// What the operator is told when a call fails (never a stack trace).
function problem(error) {
  if (error.status === 401) return "The admin token is not valid any more: sign in again.";
  if (error.status >= 500 && !error.message) return "Something went wrong on the server; try again.";
  return error.message;
}

// `read` parses the answer's text (exactMicros for the books).
async function api(method, path, body, read = JSON.parse) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.text().then(read).catch(() => ({}));
  if (!response.ok) {
    const message = answer.error ? answer.error.message : "";
    throw Object.assign(new Error(message), { status: response.status, code: answer.error && answer.error.code });
  }
  return answer;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text !== undefined) td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

async function loadOverview() {
  const overview = await api("GET", "/v1/admin/overview");
  money($("owed"), overview.credit_owed_micros);
  $("below").textContent = overview.accounts_below_threshold.toLocaleString("en-US");
  $("below-what").textContent = "accounts below " + dollars(overview.low_balance_threshold_micros);
  $("events-waiting").textContent = overview.stripe_events_waiting;
  $("events-failed").textContent = overview.stripe_events_failed;
  $("webhooks-pending").textContent = overview.webhook_deliveries_pending;
  $("endpoints-disabled").textContent = overview.webhook_endpoints_disabled;
  const backup = overview.last_backup;
  $("last-backup").textContent = backup ? when(backup.taken_at) : "never";
  $("last-backup").title = backup ? backup.path + " · " + counted(backup.accounts, "account", "accounts") + ", "
    + counted(backup.transactions, "ledger row", "ledger rows") : "";
  const backups = $("backup-list");
  backups.textContent = "";
  attentionItem(backups, null, !overview.backup_overdue ? "None."
    : backup ? "No backup for more than a day: the last was taken " + when(backup.taken_at) + "."
    : "No backup for more than a day: none was ever taken (sms-credit backup).");
}

// The last 30 of the reader's days, each with its figures, summed from the
// server's hours.
function days(hours) {
  const today = new Date(); today.setHours(0, 0, 0, 0);
  const list = [];
  for (let back = 29; back >= 0; back--) {
    const start = new Date(today); start.setDate(today.getDate() - back);
    list.push({ start: start.getTime(), paid: 0, refunded: 0, messages: 0, segments: 0 });
  }
  hours.forEach((hour) => {
    const day = list.slice().reverse().find((candidate) => candidate.start <= Date.parse(hour.hour));
    if (!day) return;
    day.paid += hour.payments_micros; day.refunded += hour.refunds_micros;
    day.messages += hour.messages; day.segments += hour.segments;
  });
  return list;
}

function bars(svg, list, series, height) {
  svg.textContent = "";
  const width = 300 / list.length;
  const top = Math.max(1, ...list.map((day) => Math.max(...series.map((one) => day[one.field]))));
  list.forEach((day, index) => {
    series.forEach((one, which) => {
      const value = day[one.field];
      if (!value) return;
      const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const barHeight = Math.max(1, (value / top) * (height - 2));
      bar.setAttribute("x", (index * width + which * width / series.length).toFixed(2));
      bar.setAttribute("y", (height - barHeight).toFixed(2));
      bar.setAttribute("width", (width / series.length - 0.5).toFixed(2));
      bar.setAttribute("height", barHeight.toFixed(2));
      bar.setAttribute("class", one.className);
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = new Date(day.start).toLocaleDateString() + ": " + one.words(value);
      bar.appendChild(title);
      svg.appendChild(bar);
    });
  });
}

async function loadReports() {
  const now = new Date();
  const start = new Date(now); start.setHours(0, 0, 0, 0); start.setDate(start.getDate() - 29);
  const month = new Date(now.getFullYear(), now.getMonth(), 1);
  const reports = await api("GET", "/v1/admin/reports?since=" + encodeURIComponent(start.toISOString())
    + "&month_since=" + encodeURIComponent(month.toISOString()));
  const list = days(reports.hours);
  const sum = (field) => list.reduce((total, day) => total + day[field], 0);
  bars($("money-chart"), list, [
    { field: "paid", className: "paid", words: (value) => dollars(value) + " paid" },
    { field: "refunded", className: "refunded", words: (value) => dollars(value) + " refunded" }], 80);
  $("money-chart-words").textContent = "Last 30 days: " + dollars(sum("paid")) + " paid (green), "
    + dollars(sum("refunded")) + " taken back for refunds (red).";
  $("money-chart-words").dataset.paid = sum("paid");
  $("money-chart-words").dataset.since = start.toISOString();
  bars($("message-chart"), list, [
    { field: "messages", className: "sent", words: (value) => counted(value, "message", "messages") },
    { field: "segments", className: "segments", words: (value) => counted(value, "segment", "segments") }], 60);
  $("message-chart-words").textContent = "Last 30 days: " + counted(sum("messages"), "message", "messages") + " (dark), "
    + counted(sum("segments"), "segment", "segments") + " (light).";
  document.querySelectorAll(".zone").forEach((element) => { element.textContent = "(days in " + zone + ")"; });
  $("margin-rows").textContent = "";
  const widest = Math.max(1, ...reports.margins.map((row) => Math.abs(row.charged_micros - row.carrier_cost_micros)));
  reports.margins.forEach((row) => {
    const tr = document.createElement("tr");
    const margin = row.charged_micros - row.carrier_cost_micros;
    cell(tr, row.country);
    cell(tr, row.messages.toLocaleString("en-US"), "money");
    money(cell(tr, undefined, "money"), row.charged_micros);
    money(cell(tr, undefined, "money wide"), row.carrier_cost_micros);
    money(cell(tr, undefined, "money margin"), margin, true);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.round((Math.abs(margin) / widest) * 6) + "rem";
    if (margin < 0) bar.style.background = "#b3261e";
    cell(tr, undefined, "wide").appendChild(bar);
    $("margin-rows").appendChild(tr);
  });
  if (reports.margins.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, "No messages this month yet.").colSpan = 6;
    $("margin-rows").appendChild(tr);
  }
}

// The books of a month (UTC): each kind of credit's opening balance, what
// was granted, consumed, expired and refunded, and its closing balance.
// Asked for by the operator only: they read the whole ledger up to the
// month's end.
const BOOK_NAMES = { paid: "Paid", promotional: "Promotional", owed: "Owed", total: "Total" };
const BOOK_FIGURES = ["opening", "granted", "consumed", "expired", "refunded", "closing"];
// Why a month's books may still change (the API's `open_because`).
const BOOKS_OPEN_BECAUSE = {
  period_not_ended: "the month has not ended",
  settling: "the month ended moments ago, and a row dated in it may still be written",
  expiries_not_swept: "the expiry sweep has not yet written the expiries of grants that ended in it",
};
// Whether the month is closed, and as of when its figures are: an open
// one's closing balances are what they are so far.
function showBooksState(books, month) {
  const shown = $("books-state");
  shown.dataset.asOf = books.as_of;
  shown.classList.toggle("open", !books.closed);
  $("books-closing-head").textContent = books.closed ? "Closing" : "Closing so far";
  shown.textContent = books.closed
    ? "Closed: nothing more can be dated in " + month + " (read " + when(books.as_of) + ", " + zone + ")."
    : "Open period — figures as of " + when(books.as_of) + " (" + zone + "): "
      + (BOOKS_OPEN_BECAUSE[books.open_because] || "it may still change") + "; the closing balances are so far.";
}
async function loadBooks() {
  const month = $("books-month").value;
  if (!/^[0-9]{4}-[0-9]{2}$/.test(month)) { $("books-message").textContent = "Pick a month."; return; }
  $("books-button").disabled = true;
  $("books-message").textContent = "Reading the ledger…";
  try {
    const books = await api("GET", "/v1/admin/reports/credit?month=" + encodeURIComponent(month), undefined, exactMicros);
    const rows = $("books-rows");
    rows.textContent = "";
    books.categories.concat([books.total]).forEach((line) => {
      const row = document.createElement("tr");
      row.dataset.category = line.category;
      cell(row, BOOK_NAMES[line.category] || line.category);
      BOOK_FIGURES.forEach((figure) => money(cell(row, undefined, "money " + figure), line[figure + "_micros"]));
      rows.appendChild(row);
    });
    state.booksMonth = month;
    $("books-message").textContent = month + " (UTC): " + counted(books.transactions_in_period, "ledger row", "ledger rows") + ".";
    showBooksState(books, month);
    $("books-csv").hidden = false;
  } catch (error) {
    // Another month's figures never stay under this month's failure.
    clearBooks();
    $("books-message").textContent = problem(error);
  } finally {
    $("books-button").disabled = false;
  }
}
// No books shown: nothing read yet, signed out, or the read failed.
function clearBooks() {
  ["books-rows", "books-message", "books-state"].forEach((id) => { $(id).textContent = ""; });
  $("books-state").classList.remove("open");
  $("books-closing-head").textContent = "Closing";
  $("books-csv").hidden = true;
}

// One line of a "needs attention" list, linking to its account.
function attentionItem(list, accountId, words) {
  const item = document.createElement("li");
  if (accountId) {
    const link = document.createElement("a");
    link.href = "#account-" + accountId;
    link.textContent = "#" + accountId;
    item.appendChild(link);
    item.appendChild(document.createTextNode(" " + words));
  } else {
    item.textContent = words;
  }
  list.appendChild(item);
}

async function loadAttention() {
  const attention = await api("GET", "/v1/admin/attention");
  const fill = (id, rows, words, count) => {
    const list = $(id);
    list.textContent = "";
    rows.forEach((row) => attentionItem(list, row.account_id, words(row)));
    if (rows.length === 0) attentionItem(list, null, "None.");
    if (count) $(count).textContent = rows.length === 50 ? "50+" : String(rows.length);
  };
  fill("low-list", attention.low_balances, (row) => row.phone + " · " + dollars(row.balance_micros), null);
  fill("auto-list", attention.auto_top_ups_off, (row) => row.reason + " · since " + when(row.since), "auto-off-count");
  fill("notice-list", attention.notices_unsent, (row) => "notice " + row.notice_id + " " + row.state
    + (row.error ? ": " + row.error : ""), "notices-unsent");
  fill("reserved-list", attention.reservations_open, (row) => "message " + row.message_id + " · "
    + dollars(row.charged_micros) + " since " + when(row.created_at), "reservations-open");
  fill("dispute-list", attention.disputes_open, (row) => (row.status.startsWith("warning_") ? "inquiry " : "dispute ")
    + row.dispute_id + " · order " + row.order_id + " · " + dollars(row.amount_micros) + " · " + row.reason
    + " · " + row.status.replaceAll("_", " ")
    + (row.respond_by ? " · respond by " + when(row.respond_by) : ""), "disputes-open");
  // Codes at half their cap or more in the last hour (with those a cap
  // held back), and phones at half their total of the hour or the day,
  // customers' included: someone may be having the service text codes at
  // its expense, or keeping a customer from signing in.
  const codeRates = attention.sign_in_codes.map((row) => ({ words: (row.country ? "to " + row.country : "to every country")
    + " · " + row.codes_last_hour + " codes in the last hour (cap " + row.cap + ")"
    + (row.capped_last_hour ? " · " + row.capped_last_hour + " not texted past the cap" : "") }));
  const phoneRates = attention.sign_in_phones.map((row) => ({ words: "to " + row.phone
    + " · " + row.codes_last_hour + " codes in the last hour (limit " + row.hour_limit + "), "
    + row.codes_last_day + " in the last day (limit " + row.day_limit + ")" }));
  fill("sign-in-list", codeRates.concat(phoneRates), (row) => row.words, null);
}

async function loadWaiting() {
  const lists = await Promise.all(["waiting", "failed"].map((status) =>
    api("GET", "/v1/admin/stripe-events?status=" + status + "&limit=50")));
  const list = $("stripe-list");
  list.textContent = "";
  lists.forEach((page) => page.events.forEach((event) => attentionItem(list, null,
    event.event_id + " · " + event.event_type + " · " + event.status + (event.detail ? ": " + event.detail : ""))));
  if (!list.firstChild) attentionItem(list, null, "None.");
  const endpoints = await api("GET", "/v1/admin/webhook-endpoints");
  const hooks = $("endpoint-list");
  hooks.textContent = "";
  endpoints.endpoints.forEach((endpoint) => attentionItem(hooks, null, endpoint.url + " · "
    + (endpoint.enabled ? "enabled" : "disabled" + (endpoint.disabled_reason ? ": " + endpoint.disabled_reason : ""))
    + (endpoint.failing_since ? " · failing since " + when(endpoint.failing_since) : "")
    + (endpoint.undeliverable ? " · " + endpoint.undeliverable : "")));
  if (!hooks.firstChild) attentionItem(hooks, null, "No endpoints.");
}

async function loadAccounts(more) {
  // Only the latest search's answer is shown (an earlier one may come later).
  const search = more ? state.search : (state.search = (state.search || 0) + 1);
  const query = new URLSearchParams({ after_id: more ? state.afterId : 0, limit: 25 });
  if (state.query) query.set("q", state.query);
  const page = await api("GET", "/v1/admin/accounts?" + query);
  if (search !== state.search) return;
  if (!more) $("account-rows").textContent = "";
  page.accounts.forEach((account) => {
    const row = document.createElement("tr");
    row.dataset.account = account.id;
    const link = document.createElement("a");
    link.href = "#account-" + account.id;
    link.textContent = "#" + account.id;
    link.setAttribute("aria-label", "Open account " + account.id);
    cell(row).appendChild(link);
    cell(row, account.phone);
    cell(row, account.email || "", "wide");
    cell(row, account.status);
    cell(row, account.auto_top_up ? "on" : "off", "wide");
    cell(row, when(account.last_activity_at), "wide last-activity");
    money(cell(row, undefined, "money balance"), account.balance_micros);
    $("account-rows").appendChild(row);
  });
  state.afterId = page.next_after_id || 0;
  $("more").hidden = !page.next_after_id;
  $("accounts-message").textContent = !more && page.accounts.length === 0 ? "No account matches." : "";
}

function ledgerRow(entry, first) {
  const row = document.createElement("tr");
  row.dataset.type = entry.type;
  row.hidden = !!$("ledger-type").value && $("ledger-type").value !== entry.type;
  cell(row, String(entry.seq), "wide");
  cell(row, when(entry.created_at), "when");
  // The holder reads the description; the reason is the operator's alone.
  cell(row, entry.type + (entry.description ? ": " + entry.description : "")
    + (entry.reason ? " (reason: " + entry.reason + ")" : ""), "wrap");
  money(cell(row, undefined, "money"), entry.amount_micros, true);
  money(cell(row, undefined, "money"), entry.balance_after_micros);
  const rows = $("ledger-rows");
  if (first) rows.insertBefore(row, rows.firstChild); else rows.appendChild(row);
}

function showBalance(micros) { money($("balance"), micros); }

// Why nothing is texted to the number (it said STOP, or Twilio refused it).
function optOutWords(optOut) {
  const how = optOut.via === "keyword" ? "texted " + optOut.keyword : "refused by the carrier";
  return "opted out of texts (" + how + ") " + when(optOut.opted_out_at) + ": nothing is sent to it until it texts START";
}

async function openAccount(id) {
  const account = await api("GET", "/v1/admin/accounts/" + id);
  state.accountId = account.id;
  state.accountPhone = account.phone;
  $("sign-in-message").textContent = "";
  $("account-title").textContent = "Account #" + account.id + " · " + account.phone;
  showBalance(account.balance_micros);
  $("account-facts").textContent = account.status + (account.email ? " · " + account.email : "") +
    (account.opt_out ? " · " + optOutWords(account.opt_out) : "");
  $("ledger-zone").textContent = "(times in " + zone + ")";
  $("ledger-rows").textContent = "";
  state.oldestSeq = account.seq + 1;
  await loadOlder();
  state.lastSeq = account.seq;
  await loadOrders();
  $("token-shown").hidden = true;
  $("token-message").textContent = "";
  $("auto-message").textContent = "";
  await Promise.all([loadTokens(), loadNotices(), loadAuto(), loadMessages(), loadGrants()]);
  $("account").hidden = false;
  $("adjust-message").textContent = "";
  $("refund-message").textContent = "";
}

// The 50 rows before the oldest shown (the ledger pages by `seq`).
async function loadOlder() {
  const after = Math.max(0, state.oldestSeq - 51);
  const count = state.oldestSeq - 1 - after;
  if (count <= 0) { $("ledger-older").hidden = true; return; }
  const ledger = await api("GET", "/v1/admin/accounts/" + state.accountId + "/transactions?after_seq=" + after + "&limit=" + count);
  ledger.transactions.slice().reverse().forEach((entry) => ledgerRow(entry, false));
  state.oldestSeq = after + 1;
  $("ledger-older").hidden = after === 0;
}

async function loadTokens() {
  const list = await api("GET", "/v1/admin/accounts/" + state.accountId + "/tokens");
  $("token-rows").textContent = "";
  list.tokens.forEach((token) => {
    const row = document.createElement("tr");
    cell(row, "#" + token.id);
    cell(row, token.source === "sign_in" ? "signing in" : "the admin");
    cell(row, when(token.created_at));
    cell(row, token.expires_at ? when(token.expires_at) : "never", "wide");
    cell(row, token.revoked_at ? when(token.revoked_at) : "—");
    $("token-rows").appendChild(row);
  });
}

// The account's credit grants, newest first: what each was, what is left.
async function loadGrants() {
  const list = await api("GET", "/v1/admin/accounts/" + state.accountId + "/credit-grants");
  $("grant-rows").textContent = "";
  list.credit_grants.forEach((grant) => {
    const row = document.createElement("tr");
    cell(row, grant.id === 0 ? "owed" : "#" + grant.id);
    cell(row, grant.category + " · priority " + grant.priority);
    cell(row, grant.source.replace(/_/g, " ") + (grant.order_id ? " (order #" + grant.order_id + ")" : ""), "wide");
    cell(row, grant.id === 0 ? "—" : dollars(grant.amount_micros), "money");
    cell(row, dollars(grant.remaining_micros), "money");
    cell(row, grant.expires_at ? when(grant.expires_at) : "never", "wide");
    cell(row, grant.status);
    $("grant-rows").appendChild(row);
  });
}

async function loadMessages() {
  const list = await api("GET", "/v1/admin/accounts/" + state.accountId + "/messages");
  $("message-rows").textContent = "";
  list.messages.forEach((message) => {
    const row = document.createElement("tr");
    cell(row, when(message.created_at));
    cell(row, message.kind + " · " + message.country);
    cell(row, String(message.segments), "money");
    money(cell(row, undefined, "money"), message.charged_micros);
    const carrier = cell(row, undefined, "money wide");
    if (message.actual_cost_micros !== null) money(carrier, message.actual_cost_micros); else carrier.textContent = "not yet";
    cell(row, message.state + (message.refunded ? ", refunded" : ""));
    $("message-rows").appendChild(row);
  });
  if (list.messages.length === 0) {
    const row = document.createElement("tr");
    cell(row, "No messages yet.").colSpan = 6;
    $("message-rows").appendChild(row);
  }
}

async function loadNotices() {
  const list = await api("GET", "/v1/admin/accounts/" + state.accountId + "/notices");
  $("notice-rows").textContent = "";
  list.notices.forEach((notice) => {
    const row = document.createElement("tr");
    cell(row, when(notice.created_at));
    cell(row, (notice.kind.kind || "").replace(/_/g, " "));
    cell(row, notice.state);
    cell(row, notice.last_error || "", "wide wrap");
    $("notice-rows").appendChild(row);
  });
  if (list.notices.length === 0) {
    const row = document.createElement("tr");
    cell(row, "No notices.").colSpan = 4;
    $("notice-rows").appendChild(row);
  }
}

async function loadAuto() {
  $("auto-off").hidden = true;
  try {
    const auto = await api("GET", "/v1/admin/accounts/" + state.accountId + "/auto-top-up");
    $("auto-state").textContent = auto.enabled
      ? "On: " + dollars(auto.amount_micros) + " when below " + dollars(auto.threshold_micros) + ", at most "
        + dollars(auto.monthly_cap_micros) + " a month (" + dollars(auto.month_charged_micros) + " this month)."
      : "Off" + (auto.paused_reason ? ": " + auto.paused_reason : "") + ".";
    $("auto-off").hidden = !auto.enabled;
    $("auto-attempts").textContent = "";
    (auto.attempts || []).forEach((attempt) => {
      const item = document.createElement("li");
      item.textContent = when(attempt.at) + " · " + dollars(attempt.amount_micros) + " · "
        + attempt.status.replace(/_/g, " ") + (attempt.reason ? ": " + attempt.reason : "");
      $("auto-attempts").appendChild(item);
    });
  } catch (error) {
    $("auto-state").textContent = error.code === "stripe_not_configured" ? "Payments are not configured on this server." : problem(error);
  }
}

async function tokenAction(method, path, question) {
  if (!confirm(question)) return;
  try {
    const answer = await api(method, "/v1/admin/accounts/" + state.accountId + path);
    $("token-message").textContent = answer.revoked !== undefined ? answer.revoked + " revoked." : "";
    $("token-shown").hidden = !answer.token;
    $("token-value").textContent = answer.token || "";
    await loadTokens();
  } catch (error) {
    $("token-message").textContent = problem(error);
  }
}

async function loadPricing() {
  const pricing = await api("GET", "/v1/admin/pricing");
  $("pricing-mode").value = pricing.mode;
  $("sale-price").value = pricing.sale_price_micros ? (pricing.sale_price_micros / 1000000).toFixed(2) : "";
  $("pricing-message").textContent = "Access costs " + dollars(pricing.price_micros) + " now.";
  const codes = await api("GET", "/v1/admin/discount-codes");
  $("code-rows").textContent = "";
  codes.discount_codes.forEach((code) => {
    const row = document.createElement("tr");
    cell(row, code.code);
    cell(row, code.percent !== undefined ? code.percent + "%" : dollars(code.amount_micros || 0));
    cell(row, code.current_uses + (code.max_uses ? " of " + code.max_uses : ""), "money");
    cell(row, code.active ? "yes" : "no");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = code.active ? "Deactivate" : "Activate";
    button.setAttribute("aria-label", (code.active ? "Deactivate " : "Activate ") + code.code);
    button.addEventListener("click", async () => {
      try {
        await api("PATCH", "/v1/admin/discount-codes/" + encodeURIComponent(code.code), { active: !code.active });
        await loadPricing();
      } catch (error) { $("code-message").textContent = problem(error); }
    });
    cell(row).appendChild(button);
    $("code-rows").appendChild(row);
  });
}

async function loadOrders() {
  const orders = await api("GET", "/v1/admin/accounts/" + state.accountId + "/orders");
  $("order-rows").textContent = "";
  orders.orders.forEach((order) => {
    const row = document.createElement("tr");
    cell(row, "#" + order.id);
    cell(row, order.order_type.replace(/_/g, " "));
    cell(row, order.status);
    money(cell(row, undefined, "money"), order.amount_micros);
    money(cell(row, undefined, "money"), order.amount_refunded_micros);
    money(cell(row, undefined, "money"), order.unspent_credit_micros);
    const actions = cell(row);
    if ((order.status === "completed" || order.status === "refunded") && order.amount_refunded_micros < order.amount_micros) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = "Refund…";
      button.setAttribute("aria-label", "Refund order " + order.id);
      button.addEventListener("click", async () => {
        state.refundOrder = order;
        state.refundKey = key();
        // What is unspent of the order's credit is what a refund takes
        // back first, and what the form offers to refund by default
        // (whole cents, never more than is left to refund).
        let unspent = 0;
        try {
          unspent = (await api("GET", "/v1/admin/orders/" + order.id)).unspent_credit_micros;
        } catch (error) { $("refund-message").textContent = problem(error); return; }
        const refundable = order.amount_micros - order.amount_refunded_micros;
        const offered = Math.min(unspent - (unspent % 10000), refundable);
        $("refund-what").textContent = "Refund order #" + order.id + " (" + dollars(order.amount_micros) + " paid, "
          + dollars(order.amount_refunded_micros) + " refunded, " + dollars(unspent) + " of its credit unspent). "
          + "The refund takes the unspent credit back first; more takes other paid credit, then may take the balance below zero. "
          + "The credit comes off when Stripe confirms the refund.";
        $("refund-amount").value = offered > 0 ? (offered / 1000000).toFixed(2) : "";
        $("refund-reason").value = "";
        $("refund-form").hidden = false;
        $("refund-amount").focus();
      });
      actions.appendChild(button);
    }
    $("order-rows").appendChild(row);
  });
}

// The admin feed: every account's changes as they commit.
async function connect() {
  try {
    const ticket = await api("POST", "/v1/admin/feed-tickets");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/v1/admin/feed?ticket=" + encodeURIComponent(ticket.ticket), ["sms-credit-feed"]);
    state.socket = socket;
    socket.onopen = () => { $("live").textContent = "· live"; };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === undefined || data.account_id === undefined) return;
      if (data.account_id === state.accountId && data.seq > (state.lastSeq || 0)) {
        state.lastSeq = data.seq;
        showBalance(data.balance_after_micros);
        ledgerRow(data, true);
        if (data.type === "refund" || data.type === "credit") loadOrders().catch(() => {});
        if (data.type === "debit" || data.type === "refund") loadMessages().catch(() => {});
      }
      const listed = document.querySelector('#account-rows tr[data-account="' + data.account_id + '"] td.balance');
      if (listed) {
        money(listed, data.balance_after_micros);
        listed.parentNode.querySelector("td.last-activity").textContent = when(data.created_at);
      }
      clearTimeout(state.refreshing);
      state.refreshing = setTimeout(() => {
        loadOverview().catch(() => {});
        loadReports().catch(() => {});
        loadAttention().catch(() => {});
        loadWaiting().catch(() => {});
      }, 300);
    };
    socket.onclose = () => {
      if (state.socket !== socket) return;
      $("live").textContent = "· not live, reconnecting…";
      if (state.token) state.retry = setTimeout(connect, 1000);
    };
  } catch (error) {
    $("live").textContent = "· not live, reconnecting…";
    if (error.status === 401) { signOut(problem(error)); return; }
    if (state.token) state.retry = setTimeout(connect, 2000);
  }
}

async function signIn(token) {
  state.token = token;
  try {
    await loadOverview();
    await loadReports();
    await loadAttention();
    await loadWaiting();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("signin").hidden = true;
    $("console").hidden = false;
    $("signout").hidden = false;
    $("signin-error").textContent = "";
    await loadAccounts(false);
    await loadPricing();
    connect();
    route();
  } catch (error) {
    signOut(error.status === 401 ? "That admin token is not valid." : problem(error));
  }
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.socket) { const socket = state.socket; state.socket = null; socket.close(); }
  clearTimeout(state.retry);
  $("console").hidden = true;
  $("account").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("live").textContent = "";
  // Nothing read with the token stays on the page.
  ["account-rows", "ledger-rows", "order-rows", "owed", "below", "events-waiting", "events-failed",
    "webhooks-pending", "endpoints-disabled", "balance", "account-title", "account-facts",
    "adjust-message", "refund-message", "accounts-message", "money-chart", "message-chart",
    "money-chart-words", "message-chart-words", "margin-rows", "token-rows", "notice-rows", "code-rows", "grant-rows",
    "token-value", "auto-state", "pricing-message", "low-list", "auto-list", "notice-list", "reserved-list",
    "auto-off-count", "notices-unsent", "reservations-open", "stripe-list", "endpoint-list", "message-rows",
    "auto-attempts"].forEach((id) => { $(id).textContent = ""; });
  clearBooks();
  $("owed").title = "";
  $("balance").title = "";
  state.accountId = null;
  $("signin-error").textContent = message || "";
}

function route() {
  const match = /^#account-(\d+)$/.exec(location.hash);
  if (match && state.token) openAccount(Number(match[1])).catch((error) => { $("accounts-message").textContent = problem(error); });
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("admin-token").value.trim());
  $("admin-token").value = "";
});
$("signout").addEventListener("click", () => signOut(""));
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("search").value.trim();
  loadAccounts(false).catch((error) => { $("accounts-message").textContent = problem(error); });
});
$("more").addEventListener("click", () => loadAccounts(true).catch((error) => { $("accounts-message").textContent = problem(error); }));
window.addEventListener("hashchange", route);

// An adjustment: the page makes the idempotency key once per amount and
// reason, so a double click or a retried request applies once.
$("adjust-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const micros = microsOf($("adjust-amount").value);
  const reason = $("adjust-reason").value.trim();
  const description = $("adjust-description").value.trim();
  if (micros === null || micros === 0) { $("adjust-message").textContent = "Give an amount in dollars and cents, like 5.00 or -2.50."; return; }
  // The grant's terms, only for credit added (the server refuses them on
  // credit taken away).
  const terms = {};
  if (micros > 0) {
    terms.category = $("adjust-category").value;
    const priority = $("adjust-priority").value.trim();
    if (priority !== "") {
      if (!/^[0-9]{1,3}$/.test(priority) || Number(priority) > 100) { $("adjust-message").textContent = "A priority is a whole number from 0 to 100."; return; }
      terms.priority = Number(priority);
    }
    const expires = $("adjust-expires").value;
    if (expires) terms.expires_at = new Date(expires).toISOString();
  }
  const what = state.accountId + ":" + micros + ":" + reason + ":" + description + ":" + JSON.stringify(terms);
  if (state.adjustFor !== what) { state.adjustFor = what; state.adjustKey = key(); }
  if (!confirm("Adjust account #" + state.accountId + " by " + dollars(micros, true) + "?\nReason: " + reason)) return;
  $("adjust-button").disabled = true;
  try {
    const answer = await api("POST", "/v1/admin/accounts/" + state.accountId + "/adjustments",
      Object.assign({ amount_micros: micros, reason, idempotency_key: state.adjustKey },
        description ? { description } : {}, terms));
    $("adjust-message").textContent = (answer.replayed ? "Already applied: " : "Applied: ") + dollars(micros, true)
      + ", balance " + dollars(answer.transaction.balance_after_micros) + ".";
    state.adjustFor = null;
    $("adjust-amount").value = "";
    $("adjust-reason").value = "";
    $("adjust-description").value = "";
    $("adjust-priority").value = "";
    $("adjust-expires").value = "";
    await loadGrants();
  } catch (error) {
    $("adjust-message").textContent = problem(error);
  } finally {
    $("adjust-button").disabled = false;
  }
});

$("refund-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const order = state.refundOrder;
  const text = $("refund-amount").value.trim();
  const micros = text ? microsOf(text) : null;
  if (text && (micros === null || micros <= 0)) { $("refund-message").textContent = "Give an amount in dollars and cents, like 3.00."; return; }
  const reason = $("refund-reason").value.trim();
  if (!confirm("Refund " + (micros ? dollars(micros) : "all that is left") + " of order #" + order.id + " through Stripe?\nReason: " + reason)) return;
  $("refund-button").disabled = true;
  const body = { reason, idempotency_key: state.refundKey };
  if (micros) body.amount_micros = micros;
  try {
    const answer = await api("POST", "/v1/admin/orders/" + order.id + "/refund", body);
    $("refund-message").textContent = "Stripe is refunding " + dollars(answer.refund.amount_micros)
      + "; the credit comes off when Stripe confirms it.";
    $("refund-form").hidden = true;
  } catch (error) {
    $("refund-message").textContent = problem(error);
  } finally {
    $("refund-button").disabled = false;
  }
});
$("refund-cancel").addEventListener("click", () => { $("refund-form").hidden = true; });

$("books-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadBooks();
});
$("books-csv").addEventListener("click", async (event) => {
  event.preventDefault();
  try {
    const month = state.booksMonth;
    const response = await fetch("/v1/admin/reports/credit.csv?month=" + encodeURIComponent(month),
      { headers: { Authorization: "Bearer " + state.token } });
    if (!response.ok) throw Object.assign(new Error(""), { status: response.status });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = "credit-" + month + ".csv";
    link.click();
  } catch (error) {
    $("books-message").textContent = problem(error);
  }
});
// This month in UTC, the books' months.
$("books-month").value = new Date().toISOString().slice(0, 7);

$("ledger-csv").addEventListener("click", async (event) => {
  event.preventDefault();
  try {
    const response = await fetch("/v1/admin/accounts/" + state.accountId + "/transactions.csv",
      { headers: { Authorization: "Bearer " + state.token } });
    if (!response.ok) throw Object.assign(new Error(""), { status: response.status });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = "account-" + state.accountId + "-ledger.csv";
    link.click();
  } catch (error) {
    $("adjust-message").textContent = problem(error);
  }
});

$("token-issue").addEventListener("click", () => tokenAction("POST", "/tokens", "Issue a new token for this account?"));
$("token-rotate").addEventListener("click", () => tokenAction("POST", "/tokens/rotate", "Revoke every token of this account and issue one?"));
$("token-revoke").addEventListener("click", () => tokenAction("DELETE", "/tokens", "Revoke every token of this account? Its open pages sign out."));
$("sign-in-lift").addEventListener("click", async () => {
  if (!confirm("Lift the sign-in limits of " + state.accountPhone + "?")) return;
  try {
    const lifted = await api("POST", "/v1/admin/sign-in/lift", { phone: state.accountPhone });
    $("sign-in-message").textContent = "Lifted: " + lifted.codes_lifted
      + " codes no longer count against this phone; it may ask for a code now.";
  } catch (error) { $("sign-in-message").textContent = problem(error); }
});
$("auto-off").addEventListener("click", async () => {
  if (!confirm("Turn auto top-up off for account #" + state.accountId + "?")) return;
  try {
    await api("PUT", "/v1/admin/accounts/" + state.accountId + "/auto-top-up", { enabled: false });
    $("auto-message").textContent = "Auto top-up is off.";
    await loadAuto();
  } catch (error) { $("auto-message").textContent = problem(error); }
});
$("pricing-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const mode = $("pricing-mode").value;
  const body = { mode };
  if (mode === "sale") {
    const micros = microsOf($("sale-price").value);
    if (!micros || micros <= 0) { $("pricing-message").textContent = "Give the sale price in dollars, like 19.99."; return; }
    body.sale_price_micros = micros;
  }
  if (!confirm("Set the price of access to " + mode + "?")) return;
  try { await api("PUT", "/v1/admin/pricing", body); await loadPricing(); }
  catch (error) { $("pricing-message").textContent = problem(error); }
});
$("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { code: $("code-name").value.trim(), type: "percent", percent: Number($("code-percent").value) };
  if ($("code-max").value.trim()) body.max_uses = Number($("code-max").value);
  try {
    await api("POST", "/v1/admin/discount-codes", body);
    $("code-message").textContent = "Created " + body.code.toUpperCase() + ".";
    $("code-name").value = ""; $("code-percent").value = ""; $("code-max").value = "";
    await loadPricing();
  } catch (error) { $("code-message").textContent = problem(error); }
});

$("ledger-older").addEventListener("click", () => loadOlder().catch((error) => { $("adjust-message").textContent = problem(error); }));
$("ledger-type").addEventListener("change", () => {
  const wanted = $("ledger-type").value;
  document.querySelectorAll("#ledger-rows tr").forEach((row) => { row.hidden = !!wanted && row.dataset.type !== wanted; });
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
