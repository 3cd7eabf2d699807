// The page Stripe Checkout sends a payer back to: after paying, it follows
// the order until Stripe's confirmation has been applied (no reload); after
// giving up, it only says nothing was charged.
"use strict";

const outcome = document.querySelector("main").dataset.outcome;
const sessionId = new URLSearchParams(location.search).get("session_id");
const status = document.getElementById("status");

const words = {
  pending: "Waiting for Stripe to confirm your payment…",
  completed_access: "Payment received: your access is ready.",
  completed_top_up: "Payment received: the credit has been added to your balance.",
  failed: "The payment did not go through. Nothing was charged.",
  expired: "The payment was not completed. Nothing was charged.",
  refunded: "This payment has been refunded.",
};

// A payer who signed up in this browser proved their phone: the sign-up
// token it kept is exchanged for an account token, and the account opens
// without signing in again. Anyone else signs in on the account page.
async function enterAccount() {
  let signUp = null;
  try { signUp = JSON.parse(sessionStorage.getItem("sms-credit-sign-up") || "null"); } catch (_) { /* none */ }
  if (!signUp || !signUp.phone || !signUp.token) return;
  try {
    const response = await fetch("/v1/sign-in", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ phone: signUp.phone, sign_up_token: signUp.token }) });
    if (!response.ok) return;
    const signedIn = await response.json();
    sessionStorage.setItem("sms-credit-token", signedIn.token);
    sessionStorage.removeItem("sms-credit-sign-up");
    document.getElementById("next").textContent = "Go to your account";
    status.textContent = words.completed_access + " Opening your account…";
    setTimeout(() => { location.href = "/account"; }, 1500);
  } catch (_) { /* the account page still works: sign in there */ }
}

async function follow(wait) {
  let answer;
  try {
    answer = await fetch("/v1/checkout/sessions/" + encodeURIComponent(sessionId));
  } catch (_) {
    setTimeout(() => follow(Math.min(wait * 2, 10000)), wait);
    return;
  }
  if (answer.status === 404) {
    status.textContent = "This payment is not known here.";
    return;
  }
  if (!answer.ok) {
    setTimeout(() => follow(Math.min(wait * 2, 10000)), wait);
    return;
  }
  const order = await answer.json();
  if (order.status === "completed") {
    status.textContent = order.order_type === "initial_access"
      ? words.completed_access : words.completed_top_up;
    if (order.order_type === "initial_access") enterAccount();
    return;
  }
  status.textContent = words[order.status] || words.pending;
  if (order.status === "pending") setTimeout(() => follow(Math.min(wait + 500, 5000)), wait);
}

if (outcome === "success") {
  if (sessionId && /^cs_[A-Za-z0-9_]{1,250}$/.test(sessionId)) {
    follow(1500);
  } else {
    status.textContent = "Thank you. Your account shows the payment once Stripe confirms it.";
  }
}
