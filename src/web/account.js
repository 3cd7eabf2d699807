// The account page's script (served as /account.js, so the page's CSP
// allows no inline script).
"use strict";
// Money arrives as integer micro-dollars, shown as the server shows it:
// exactly, from the digits, with at least two decimals and no trailing zeros
// beyond them ($2.35, $0.0565, -$82.266). A message's cost, an adjustment or
// a balance may have a part less than a cent, never cut or rounded away.
function dollars(micros, signed) {
  const digits = String(Math.abs(micros)).padStart(7, "0");
  const text = "$" + Number(digits.slice(0, -6)) + "." + digits.slice(-6).replace(/0+$/, "").padEnd(2, "0");
  return (micros < 0 ? "-" : signed && micros > 0 ? "+" : "") + text;
}

const state = { token: null, accountId: null, lastSeq: 0, socket: null, retry: null,
  rate: null, points: [], phone: null };
// Times are shown in the reader's own time zone, and say which.
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
const DAY_MS = 86400000;

function when(entry) {
  const at = Date.parse(entry.created_at || "");
  if (Number.isNaN(at)) return "";
  return new Date(at).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

// A per-segment rate like 56500 micro-dollars → "$0.0565", from the digits.
function rateText(micros) {
  return dollars(micros, false);
}

function showBalance(micros) {
  $("balance").textContent = dollars(micros, false);
  $("estimate").textContent = state.rate
    ? "About " + Math.floor(Math.max(micros, 0) / state.rate).toLocaleString() + " messages at your country's rate ("
      + rateText(state.rate) + " each)."
    : "Messages to your number are not available yet.";
}

// The balance split into what was bought and what was given, and each
// grant with credit left: how much, and when it expires (if it does).
// Loads may overlap (a burst, then a sign-in): only the newest is shown,
// so an answer that arrives late never puts older grants back.
async function loadGrants() {
  const accountId = state.accountId;
  const load = (state.grantsLoad = (state.grantsLoad || 0) + 1);
  const answer = await api("GET", "/v1/accounts/" + accountId + "/credit-grants");
  if (state.accountId !== accountId || state.grantsLoad !== load) return;
  let purchased = 0;
  let bonus = 0;
  $("grants").textContent = "";
  answer.credit_grants.forEach((grant) => {
    if (grant.status !== "active") return;
    if (grant.category === "paid") purchased += grant.remaining_micros; else bonus += grant.remaining_micros;
    const row = document.createElement("tr");
    const what = document.createElement("td");
    const granted = new Date(Date.parse(grant.granted_at)).toLocaleDateString([], { month: "short", day: "numeric", year: "numeric" });
    what.textContent = (grant.category === "paid" ? "Purchased" : "Bonus") + ", " + granted;
    const left = document.createElement("td");
    left.className = "amount";
    left.textContent = dollars(grant.remaining_micros, false);
    const expires = document.createElement("td");
    expires.textContent = grant.expires_at
      ? new Date(Date.parse(grant.expires_at)).toLocaleString([], { month: "short", day: "numeric", year: "numeric", hour: "2-digit", minute: "2-digit" })
      : "never";
    row.append(what, left, expires);
    $("grants").appendChild(row);
  });
  $("credit-split").textContent = "Purchased credit " + dollars(purchased, false) + " · bonus credit " + dollars(bonus, false);
  $("grants-box").hidden = $("grants").childElementCount === 0;
}

// What each payment bought, for people.
const PAYMENT_KINDS = { initial_access: "Access", top_up: "Top-up", auto_top_up: "Auto top-up" };

// Each payment, newest first, with Stripe's receipt once Stripe has given
// it (the server asks for it; a later visit shows one not given yet).
async function loadPayments() {
  const accountId = state.accountId;
  const load = (state.paymentsLoad = (state.paymentsLoad || 0) + 1);
  const answer = await api("GET", "/v1/accounts/" + accountId + "/payments");
  if (state.accountId !== accountId || state.paymentsLoad !== load) return;
  $("payments").textContent = "";
  answer.payments.forEach((payment) => {
    const row = document.createElement("tr");
    const at = document.createElement("td");
    at.textContent = new Date(Date.parse(payment.completed_at)).toLocaleDateString([], { month: "short", day: "numeric", year: "numeric" });
    const what = document.createElement("td");
    what.textContent = PAYMENT_KINDS[payment.order_type] || "Payment";
    const paid = document.createElement("td");
    paid.className = "amount";
    paid.textContent = dollars(payment.amount_micros, false)
      + (payment.amount_refunded_micros > 0 ? " (" + dollars(payment.amount_refunded_micros, false) + " refunded)" : "");
    const receipt = document.createElement("td");
    if (payment.receipt_url) {
      const link = document.createElement("a");
      link.href = payment.receipt_url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = "Receipt";
      link.setAttribute("aria-label", "Receipt for the payment of " + at.textContent);
      receipt.appendChild(link);
    } else {
      receipt.textContent = "not ready yet";
    }
    row.append(at, what, paid, receipt);
    $("payments").appendChild(row);
  });
  $("payments-box").hidden = answer.payments.length === 0;
}

// The grants again, once, after a burst of rows (a page back from the
// background may take a thousand at once).
function soonLoadGrants() {
  if (state.grantsSoon) return;
  state.grantsSoon = setTimeout(() => {
    state.grantsSoon = null;
    loadGrants().catch(() => {});
    if (state.paymentsDue) {
      state.paymentsDue = false;
      loadPayments().catch(() => {});
    }
  }, 500);
}

// The sparkline: the balance as a step line over the last 30 days, drawn
// from the ledger (no chart library).
function drawChart() {
  const now = Date.now();
  const start = now - 30 * DAY_MS;
  const points = state.points.filter((point) => point.at >= start);
  const before = state.points.filter((point) => point.at < start).pop();
  const first = before ? before.balance : (points.length ? points[0].before : 0);
  const steps = [{ at: start, balance: first }].concat(points);
  steps.push({ at: now, balance: steps[steps.length - 1].balance });
  const values = steps.map((point) => point.balance);
  const low = Math.min(0, ...values);
  const high = Math.max(...values, low + 1);
  const x = (at) => ((at - start) / (now - start)) * 300;
  const y = (balance) => 58 - ((balance - low) / (high - low)) * 56;
  const coordinates = [];
  steps.forEach((point, index) => {
    if (index > 0) coordinates.push(x(point.at).toFixed(1) + "," + y(steps[index - 1].balance).toFixed(1));
    coordinates.push(x(point.at).toFixed(1) + "," + y(point.balance).toFixed(1));
  });
  $("chart-line").setAttribute("points", coordinates.join(" "));
}

function remember(entry) {
  const at = Date.parse(entry.created_at || "");
  const balance = entry.balance_after_micros;
  if (!Number.isNaN(at)) state.points.push({ at, balance, before: balance - entry.amount_micros });
}

// What a customer is told when something does not work (the details are
// the operator's, in the server's log).
function customerMessage(error) {
  if (error.code === "stripe_not_configured") return "Payments are not available right now.";
  if (error.status >= 500) return "Something went wrong on our side; please try again later.";
  return error.message;
}
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = answer.error ? answer.error.message : "HTTP " + response.status;
    throw Object.assign(new Error(message), { status: response.status, code: answer.error && answer.error.code });
  }
  return answer;
}

// Calls a route that takes no credential: no Authorization header at all
// (a stray one would be taken for the host application's key).
async function anonymous(method, path, body) {
  const response = await fetch(path, {
    method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = answer.error ? answer.error.message : "HTTP " + response.status;
    throw Object.assign(new Error(message), { status: response.status,
      code: answer.error && answer.error.code,
      retryAfter: Number(response.headers.get("Retry-After")) || null });
  }
  return answer;
}

function waitWords(seconds) {
  if (!seconds) return "a little while";
  return seconds < 120 ? seconds + " seconds" : Math.ceil(seconds / 60) + " minutes";
}

// What a customer is told when signing in by phone does not work.
function signInMessage(error) {
  switch (error.code) {
    case "invalid_code": return "That code is not right, or it has expired. Check it, or ask for a new one.";
    case "invalid_code_format": return "The code is the 6 digits in the text message.";
    case "invalid_phone": return "That does not look like a mobile number. Start with + and the country code, like +14155551234.";
    case "sign_in_not_configured": return "Signing in by text message is not available right now.";
    case "code_not_sent": return "We could not send the code just now. Please try again in a minute.";
    case "sign_up_required": return "Your sign-in has expired. Please sign in with your phone again.";
    default:
      if (error.status === 429) return "Too many tries. Please wait " + waitWords(error.retryAfter) + " and try again.";
      return customerMessage(error);
  }
}

const SIGN_UP_KEY = "sms-credit-sign-up";

function showPhoneStep(message) {
  $("phone-form").hidden = false;
  $("code-form").hidden = true;
  $("phone-message").className = message ? "error" : "";
  $("phone-message").textContent = message || "";
}

function showSignUp(signUp) {
  sessionStorage.setItem(SIGN_UP_KEY, JSON.stringify(signUp));
  $("signup-phone").textContent = signUp.phone;
  $("signin").hidden = true;
  $("signup").hidden = false;
  $("signup-message").textContent = "";
}

function savedSignUp() {
  try {
    const signUp = JSON.parse(sessionStorage.getItem(SIGN_UP_KEY) || "null");
    if (signUp && Date.parse(signUp.expires_at) > Date.now()) return signUp;
  } catch (_) { /* a damaged entry is no sign-up */ }
  sessionStorage.removeItem(SIGN_UP_KEY);
  return null;
}

function addRow(entry) {
  const row = document.createElement("tr");
  row.dataset.seq = entry.seq;
  const cells = [entry.seq, when(entry),
    entry.description || entry.type, dollars(entry.amount_micros, true),
    dollars(entry.balance_after_micros, false)];
  const classes = ["seq", "when", "what", "amount", "after"];
  cells.forEach((value, index) => {
    const cell = document.createElement("td");
    cell.className = classes[index];
    if (index === 2) {
      const text = document.createElement("span");
      text.textContent = value;
      cell.appendChild(text);
    } else {
      cell.textContent = value;
    }
    row.appendChild(cell);
  });
  const body = $("transactions");
  body.insertBefore(row, body.firstChild);
  while (body.children.length > 50) body.removeChild(body.lastChild);
}

// "2.50" → 2500000 micro-dollars, from the digits (no float touches money);
// null for anything else.
function micros(text) {
  const match = /^\s*\$?(\d{1,7})(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  return Number(match[1]) * 1000000 + Number((match[2] || "").padEnd(2, "0")) * 10000;
}

function showAuto(view) {
  $("auto").hidden = false;
  const card = view.card;
  $("auto-card").textContent = card
    ? "Card: " + card.brand + " ending " + card.last4 + " (expires " + String(card.exp_month).padStart(2, "0") + "/" + card.exp_year + ")"
    : "No saved card yet: top up once on this page and the card is saved.";
  $("auto-status").textContent = view.enabled
    ? "On: below " + dollars(view.threshold_micros) + ", " + dollars(view.amount_micros) + " is charged (at most "
      + dollars(view.monthly_cap_micros) + " a month; " + dollars(view.month_charged_micros) + " so far this month)."
    : "Off." + (view.paused_reason ? " It turned itself off: " + view.paused_reason + "." : "");
  $("auto-threshold").value = dollars(view.threshold_micros).slice(1);
  $("auto-amount").value = dollars(view.amount_micros).slice(1);
  $("auto-cap").value = dollars(view.monthly_cap_micros).slice(1);
  $("auto-terms").textContent = view.terms;
  $("auto-on").textContent = view.enabled ? "Save" : "Turn on";
  $("auto-off").hidden = !view.enabled;
  const rows = $("auto-attempts");
  rows.textContent = "";
  view.attempts.forEach((attempt) => {
    const row = document.createElement("tr");
    [attempt.at.replace("T", " ").slice(0, 16), dollars(attempt.amount_micros),
     attempt.status.replace(/_/g, " ") + (attempt.reason ? " (" + attempt.reason + ")" : "")]
      .forEach((value, index) => {
        const cell = document.createElement("td");
        cell.textContent = value;
        if (index === 1) cell.className = "amount";
        row.appendChild(cell);
      });
    rows.appendChild(row);
  });
}

async function loadAuto() {
  try {
    showAuto(await api("GET", "/v1/accounts/" + state.accountId + "/auto-top-up"));
  } catch (error) {
    // Payments are not configured on this server: no auto top-up either.
    $("auto").hidden = true;
  }
}

async function changeAuto(change) {
  $("auto-message").textContent = "";
  try {
    showAuto(await api("PUT", "/v1/accounts/" + state.accountId + "/auto-top-up", change));
  } catch (error) {
    $("auto-message").className = "error";
    $("auto-message").textContent = customerMessage(error);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + "/v1/accounts/" + state.accountId + "/feed?since=" + state.lastSeq;
  // The token travels as a subprotocol, never in the URL.
  const socket = new WebSocket(url, ["sms-credit-feed", state.token]);
  state.socket = socket;
  socket.onopen = () => { $("live").textContent = "· live"; };
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === undefined) {
      // The snapshot: the balance now.
      showBalance(data.balance_micros);
      return;
    }
    // A ledger row, as the API lists them.
    if (data.seq <= state.lastSeq) return;
    state.lastSeq = data.seq;
    showBalance(data.balance_after_micros);
    addRow(data);
    remember(data);
    drawChart();
    // A credit may be an auto top-up: show how it went.
    if (data.amount_micros > 0 && !$("auto").hidden) loadAuto();
    // A payment's credit, or a refund's: the payments again too.
    if (data.type === "credit" || (data.type === "refund" && data.amount_micros < 0)) state.paymentsDue = true;
    soonLoadGrants();
  };
  socket.onclose = (event) => {
    // 1008: the token was revoked or expired; signing in again is the way back.
    if (event.code === 1008 && /revoked|expired/.test(event.reason) && state.socket === socket) {
      signOut();
      $("signin-error").textContent = "Your sign-in has ended. Please sign in again.";
      return;
    }
    $("live").textContent = "· not live, reconnecting…";
    if (state.token && state.socket === socket) state.retry = setTimeout(connect, 1000);
  };
}

async function signIn(token) {
  state.token = token;
  try {
    const account = await api("GET", "/v1/accounts/me");
    state.accountId = account.id;
    state.rate = account.rate_micros_per_segment;
    showBalance(account.balance_micros);
    // The number said STOP: it is sent nothing (no low-balance warning
    // either) until it texts START.
    $("opted-out").hidden = !account.opt_out;
    if (account.opt_out) {
      $("opted-out").textContent = "Your number has opted out of our texts, so we send it nothing, not even a low-balance warning. Text START to our number to get texts again.";
    }
    const recent = await api("GET", "/v1/accounts/" + account.id + "/transactions?latest=1000");
    // Signed out (or in as someone else) while this was loading: stop here.
    if (state.token !== token) return;
    $("transactions").textContent = "";
    $("when-header").textContent = "When (" + zone + ")";
    state.lastSeq = 0;
    state.points = [];
    const oldestFirst = recent.transactions.slice().reverse();
    oldestFirst.forEach((entry) => {
      remember(entry);
      state.lastSeq = Math.max(state.lastSeq, entry.seq);
    });
    oldestFirst.slice(-20).forEach(addRow);
    drawChart();
    sessionStorage.setItem("sms-credit-token", token);
    sessionStorage.removeItem(SIGN_UP_KEY);
    $("signup").hidden = true;
    $("signin").hidden = true;
    $("account").hidden = false;
    $("signin-error").textContent = "";
    connect();
    loadGrants().catch(() => {});
    loadPayments().catch(() => {});
    // Auto top-up needs payments; a server without them does not offer it.
    if (account.payments_available) loadAuto(); else $("auto").hidden = true;
  } catch (error) {
    if (state.token !== token) return;
    state.token = null;
    $("signin-error").textContent = error.status === 401 ? "That token is not valid, or it has expired." : customerMessage(error);
  }
}

function signOut() {
  state.token = null;
  sessionStorage.removeItem(SIGN_UP_KEY);
  $("signup").hidden = true;
  $("code").value = "";
  showPhoneStep();
  clearTimeout(state.retry);
  if (state.socket) { const socket = state.socket; state.socket = null; socket.close(); }
  sessionStorage.removeItem("sms-credit-token");
  $("account").hidden = true;
  $("auto").hidden = true;
  $("signin").hidden = false;
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("signout").addEventListener("click", signOut);
$("phone-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const phone = $("phone").value.trim().replace(/[\s().-]/g, "");
  $("phone-button").disabled = true;
  try {
    await anonymous("POST", "/v1/sign-in/code", { phone });
    state.phone = phone;
    $("code-phone").textContent = phone;
    $("phone-form").hidden = true;
    $("code-form").hidden = false;
    $("phone-message").className = "";
    $("phone-message").textContent = "We texted a code to " + phone + ". It works for 10 minutes.";
    $("code").focus();
  } catch (error) {
    showPhoneStep(signInMessage(error));
  } finally {
    $("phone-button").disabled = false;
  }
});
$("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("code-button").disabled = true;
  try {
    const answer = await anonymous("POST", "/v1/sign-in", { phone: state.phone, code: $("code").value.trim() });
    $("code").value = "";
    if (answer.token) {
      showPhoneStep();
      await signIn(answer.token);
    } else {
      showSignUp({ phone: state.phone, token: answer.sign_up_token, expires_at: answer.expires_at });
    }
  } catch (error) {
    $("phone-message").className = "error";
    $("phone-message").textContent = signInMessage(error);
  } finally {
    $("code-button").disabled = false;
  }
});
$("code-again").addEventListener("click", () => showPhoneStep());
$("signup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const signUp = savedSignUp();
  if (!signUp) {
    $("signup").hidden = true;
    $("signin").hidden = false;
    showPhoneStep("Your sign-in has expired. Please sign in with your phone again.");
    return;
  }
  const body = { phone: signUp.phone, email: $("signup-email").value.trim(), sign_up_token: signUp.token };
  const code = $("signup-code").value.trim();
  if (code) body.discount_code = code;
  $("signup-button").disabled = true;
  $("signup-message").className = "";
  $("signup-message").textContent = "Starting checkout…";
  try {
    const started = await anonymous("POST", "/v1/checkout/access", body);
    location.href = started.checkout_url;
  } catch (error) {
    $("signup-message").className = "error";
    $("signup-message").textContent = signInMessage(error);
    $("signup-button").disabled = false;
  }
});
$("topup").addEventListener("click", async () => {
  $("topup-message").className = "";
  $("topup-message").textContent = "Starting checkout…";
  try {
    const started = await api("POST", "/v1/checkout/topup");
    location.href = started.checkout_url;
  } catch (error) {
    $("topup-message").className = "error";
    $("topup-message").textContent = customerMessage(error);
  }
});
$("auto-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const change = {
    enabled: true,
    threshold_micros: micros($("auto-threshold").value),
    amount_micros: micros($("auto-amount").value),
    monthly_cap_micros: micros($("auto-cap").value),
  };
  if (Object.values(change).includes(null)) {
    $("auto-message").className = "error";
    $("auto-message").textContent = "Amounts are dollars and cents, like 2.00.";
    return;
  }
  changeAuto(change);
});
$("auto-off").addEventListener("click", () => changeAuto({ enabled: false }));
const saved = sessionStorage.getItem("sms-credit-token");
const pendingSignUp = savedSignUp();
if (saved) signIn(saved);
else if (pendingSignUp) showSignUp(pendingSignUp);
