// The connection badge of the top bar (#conn), on every page that updates itself: over Socket.IO
// (the runs list and a run's page: live.js) or by polling the API (workers, a worker, tasks, a
// task, analytics: api.js). It says "live" while updates arrive and "reconnecting…" while they
// cannot; pages that do not update themselves (workflows, users) do not show it.
let source = null; // "socket" | "poll": what drives the badge on this page

const TITLES = {
  socket: "live updates over Socket.IO",
  poll: "this page refreshes itself from the server every few seconds",
};

/** This page updates itself by `how` ("socket" or "poll"): the badge follows that. */
export function updatesBy(how) { source = how; }

/** The state of `how`'s connection; ignored unless it is what drives this page. */
export function connState(how, ok, why) {
  if (how !== source) return;
  const el = document.getElementById("conn");
  if (!el) return;
  el.hidden = false;
  el.textContent = ok ? "live" : "reconnecting…";
  el.className = `conn ${ok ? "ok" : "down"}`;
  el.dataset.source = how;
  el.title = ok ? TITLES[how] : `disconnected${why ? `: ${why}` : ""}; retrying`;
}
