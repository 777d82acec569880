// Entry point: every page loads this module; it starts the page's own module.
import "./app.css";
import { updatesBy } from "./conn.js";
import { boot, toast } from "./util.js";

const PAGES = {
  runs: () => import("./runs.js"),
  run: () => import("./run.js"),
  analytics: () => import("./analytics.js"),
  workflows: () => import("./workflows.js"),
  schedules: () => import("./schedules.js"),
  users: () => import("./users.js"),
  notifications: () => import("./notifications.js"),
  workers: () => import("./workers.js"),
  worker: () => import("./worker.js"),
  tasks: () => import("./tasks.js"),
  task: () => import("./task.js"),
};

// The pages that poll the API to stay current (runs and run follow Socket.IO: live.js).
const POLLED = new Set(["analytics", "schedules", "workers", "worker", "tasks", "task", "notifications"]);

async function start() {
  const load = PAGES[boot.page];
  if (!load) return;
  if (POLLED.has(boot.page)) updatesBy("poll");
  try {
    const mod = await load();
    await mod.init();
    document.body.dataset.ready = "1";
  } catch (err) {
    console.error(err);
    toast(`the page failed to start: ${err.message}`, "error");
  }
}

start();
