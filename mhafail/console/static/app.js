// mhafail console: one page, six views over the JSON API (/api/v1). No framework.
// Every value from the API is put into the page with textContent, never as HTML.
"use strict";
(function () {
  const API = "/api/v1";
  const $ = sel => document.querySelector(sel);
  let session = null;       // {user, role, csrf}
  let timer = null;
  let page = null;
  let members = [];         // latest member names (for move/drain choices)
  let watching = null;      // request id shown on the commands page
  const moveChoice = {};    // VIP -> the node picked in its "move to" list (kept across refreshes)

  // --- helpers --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status; this.code = err.code; this.detail = err;
    }
  }

  async function api(method, path, body) {
    const opts = {method, headers: {}, credentials: "same-origin"};
    if (method !== "GET") {
      opts.headers["Content-Type"] = "application/json";
      if (session) opts.headers["X-CSRF-Token"] = session.csrf;
      opts.body = JSON.stringify(body || {});
    }
    const resp = await fetch(API + path, opts);
    let doc = null;
    try { doc = await resp.json(); } catch (e) { doc = null; }
    if (!resp.ok) {
      if (resp.status === 401 && path !== "/login") { showLogin(); }
      throw new ApiError(resp.status, doc);
    }
    return doc;
  }

  function td(text, cls) {
    const cell = document.createElement("td");
    if (text instanceof Node) cell.appendChild(text); else cell.textContent = text ?? "";
    if (cls) cell.className = cls;
    return cell;
  }

  function span(text, cls) {
    const s = document.createElement("span");
    s.textContent = text; if (cls) s.className = cls;
    return s;
  }

  function pills(items) {
    const frag = document.createDocumentFragment();
    for (const item of items) frag.appendChild(span(item, "pill"));
    return frag;
  }

  function button(text, onclick, cls) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = text; b.className = cls || "";
    b.addEventListener("click", onclick);
    return b;
  }

  function duration(s) {
    if (s === null || s === undefined) return "";
    s = Math.max(0, s);
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor(s % 86400 / 3600)} h`;
  }

  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleString() : "";
  }

  function banner(text) {
    const b = $("#banner");
    b.textContent = text || ""; b.hidden = !text;
  }

  function isOperator() { return session && session.role === "operator"; }

  function fill(tbody, rows) { tbody.replaceChildren(...rows); }

  // --- login ----------------------------------------------------------------------

  function showLogin() {
    session = null;
    stopPolling();
    document.querySelectorAll(".page").forEach(p => { p.hidden = true; });
    $("#nav").hidden = true; $("#logout").hidden = true; $("#whoami").textContent = "";
    $("#page-login").hidden = false;
    $("#login-user").focus();
  }

  async function login(ev) {
    ev.preventDefault();
    $("#login-error").textContent = "";
    try {
      session = await api("POST", "/login",
        {user: $("#login-user").value, password: $("#login-password").value});
      $("#login-password").value = "";
      started();
    } catch (e) {
      $("#login-error").textContent = e.message;
    }
  }

  async function logout() {
    try { await api("POST", "/logout"); } catch (e) { /* the session is gone either way */ }
    showLogin();
  }

  function started() {
    $("#page-login").hidden = true;
    $("#nav").hidden = false; $("#logout").hidden = false;
    $("#whoami").textContent = `${session.user} (${session.role})`;
    document.body.classList.toggle("reader", !isOperator());
    route();
  }

  // --- routing and polling --------------------------------------------------------

  const PAGES = {
    cluster: {load: loadCluster, every: 1000},
    vips: {load: loadVips, every: 1000},
    config: {load: loadConfig, every: 2000},
    logs: {load: loadLogs, every: 2000},
    audit: {load: null, every: 0},
    commands: {load: loadCommands, every: 1000},
  };

  function stopPolling() { if (timer) { clearTimeout(timer); timer = null; } }

  function route() {
    if (!session) return;
    const name = (location.hash || "#cluster").slice(1);
    page = PAGES[name] ? name : "cluster";
    document.querySelectorAll(".page").forEach(p => { p.hidden = p.id !== `page-${page}`; });
    document.querySelectorAll("#nav a").forEach(a => {
      a.classList.toggle("active", a.dataset.page === page);
    });
    stopPolling();
    poll(page);
  }

  async function poll(name) {
    const spec = PAGES[name];
    if (!spec.load) return;
    try {
      await spec.load();
      banner("");
    } catch (e) {
      if (e.status !== 401) banner(`Could not refresh: ${e.message}`);
    }
    if (page === name && session && spec.every) {
      timer = setTimeout(() => poll(name), spec.every);
    }
  }

  // --- cluster --------------------------------------------------------------------

  async function loadCluster() {
    const doc = await api("GET", "/cluster");
    $("#cluster-name").textContent = `cluster ${doc.cluster}`;
    $("#cluster-count").textContent = `${doc.members.length} members`;
    const c = doc.console;
    $("#console-info").textContent = `console ${c.name}: ZooKeeper ${c.connection}, ` +
      `lease ${c.lease_remaining.toFixed(1)} s left; managers: ${c.managers.join(", ") || "none"}`;
    members = doc.members.map(m => m.name);
    fill($("#members tbody"), doc.members.map(m => {
      const tr = document.createElement("tr");
      tr.dataset.node = m.name;
      const st = m.status;
      let lease = "not sampled yet";
      let leaseCls = "muted";
      if (st && st.reply === "ok") {
        lease = `${st.connection}, ${st.lease_remaining !== null ? st.lease_remaining.toFixed(1) + " s" : "?"}`;
        leaseCls = st.lease_remaining > 0 ? "state-valid" : "state-lost";
      } else if (st) {
        lease = `${st.reply}: ${st.error}`; leaseCls = "state-error";
      }
      const labels = Object.entries(m.labels).map(([k, v]) => `${k}=${v}`);
      tr.append(td(m.name, "node-name"), td(m.host), td(pills(m.roles)), td(pills(labels)),
        td(lease, leaseCls), td(duration(m.uptime)), td(m.version),
        td(m.addresses.join(" "), "mono"));
      return tr;
    }));
  }

  // --- VIPs -----------------------------------------------------------------------

  function vipStatus(text) { $("#vip-action").textContent = text; }

  async function followRequest(result, report) {
    if (!result.request) { report(`done (${result.via})`); return; }
    report(`request ${result.request} sent; waiting for the reply...`);
    for (let i = 0; i < 40; i++) {
      const r = await api("GET", `/commands/${result.request}`);
      if (r.complete) {
        const parts = Object.entries(r.replies).map(([n, rep]) =>
          `${n}: ${rep.status}${rep.error ? " (" + rep.error + ")" : ""}`);
        report(`request ${result.request}: ${parts.join("; ")}`);
        return;
      }
      await new Promise(res => setTimeout(res, 250));
    }
    report(`request ${result.request}: no reply yet (see Commands)`);
  }

  async function act(path, body, report) {
    try {
      const result = await api("POST", path, body);
      await followRequest(result, report);
    } catch (e) {
      report(`refused: ${e.message}`);
    }
  }

  async function loadVips() {
    const doc = await api("GET", "/vips");
    if (!members.length) {
      try { members = (await api("GET", "/cluster")).members.map(m => m.name); } catch (e) { /* keep */ }
    }
    fill($("#vips tbody"), doc.vips.map(v => {
      const tr = document.createElement("tr");
      tr.dataset.vip = v.address;
      const move = document.createElement("span");
      if (isOperator()) {
        const sel = document.createElement("select");
        sel.className = "move-target";
        for (const n of v.declared_by.filter(n => n !== v.owner)) {
          const o = document.createElement("option"); o.value = n; o.textContent = n;
          sel.appendChild(o);
        }
        if (moveChoice[v.address] && v.declared_by.includes(moveChoice[v.address])) {
          sel.value = moveChoice[v.address];
        }
        sel.addEventListener("change", () => { moveChoice[v.address] = sel.value; });
        const b = button("Move", () => {
          if (!sel.value) return;
          act("/vips/move", {address: v.address, node: sel.value}, vipStatus);
        }, "move");
        b.disabled = !sel.options.length;
        move.append(sel, " ", b);
      }
      tr.append(td(v.address, "mono"), td(v.owner || "—", "owner"), td(v.state, `state-${v.state}`),
        td(when(v.since)), td(v.preferred || ""), td(v.target || ""),
        td(pills(v.declared_by)), td(move, "op"));
      return tr;
    }));
    const nodes = [...new Set([...members, ...doc.drained])].sort();
    fill($("#drain tbody"), nodes.map(n => {
      const tr = document.createElement("tr");
      tr.dataset.node = n;
      const drained = doc.drained.includes(n);
      const action = isOperator()
        ? button(drained ? "Undrain" : "Drain",
          () => act(drained ? "/vips/undrain" : "/vips/drain", {node: n}, vipStatus),
          drained ? "undrain" : "drain secondary")
        : "";
      tr.append(td(n), td(drained ? "yes" : "no", drained ? "state-moving" : ""),
        td(action, "op"));
      return tr;
    }));
  }

  // --- config ---------------------------------------------------------------------

  function configStatus(text) { $("#config-action").textContent = text; }

  async function loadConfig() {
    const doc = await api("GET", "/config");
    const holder = $("#config-repos");
    if (!doc.repos.length) {
      holder.replaceChildren(span("No config repositories in this cluster.", "muted"));
      return;
    }
    const active = document.activeElement;
    if (active && holder.contains(active) && active.tagName === "INPUT") return;  // typing
    holder.replaceChildren(...doc.repos.map(repo => {
      const box = document.createElement("div");
      box.className = "card"; box.dataset.repo = repo.name;
      const h = document.createElement("h2");
      h.textContent = `Repository ${repo.name}`;
      const head = document.createElement("p");
      head.className = "mono";
      head.textContent = repo.head
        ? `head ${repo.head.sha.slice(0, 12)} by ${repo.head.author}, ${when(repo.head.time)}: ${repo.head.message}`
        : "nothing published yet";
      const drift = document.createElement("p");
      drift.textContent = repo.drift.length ? `drift: ${repo.drift.join(", ")}` : "no drift";
      drift.className = repo.drift.length ? "state-pending" : "state-ok";
      const table = document.createElement("table");
      table.innerHTML = "<thead><tr><th>Node</th><th>Applied</th><th>State</th><th>Target</th>" +
        "<th>Mode</th><th>Last error</th><th>Reported</th><th class='op'></th></tr></thead><tbody></tbody>";
      fill(table.querySelector("tbody"), repo.nodes.map(n => {
        const tr = document.createElement("tr");
        tr.dataset.node = n.node;
        if (n.drift) tr.className = "drift";
        tr.append(td(n.node + (n.live ? "" : " (gone)")), td((n.sha || "").slice(0, 12), "mono"),
          td(n.state, `state-${n.state}`), td((n.target || "").slice(0, 12), "mono"),
          td(n.mode), td(n.error, "error"), td(when(n.time)),
          td(isOperator() && n.live ? button("Pull", () => act("/config/pull",
            {repo: repo.name, node: n.node}, configStatus), "secondary") : "", "op"));
        return tr;
      }));
      box.append(h, head, drift, table);
      if (repo.silent.length) box.append(span(`not reporting: ${repo.silent.join(", ")}`, "muted"));
      if (isOperator()) {
        const row = document.createElement("div");
        row.className = "row op";
        const all = button("Pull on all nodes", () => act("/config/pull", {repo: repo.name},
          configStatus));
        const sha = document.createElement("input");
        sha.placeholder = "sha to roll back to"; sha.className = "rollback-sha mono"; sha.size = 44;
        if (repo.head && repo.head.parent) sha.value = repo.head.parent;
        const rb = button("Roll back", () => {
          if (!window.confirm(`Publish the tree of ${sha.value.slice(0, 12)} as the new head of ${repo.name}?`)) return;
          act("/config/rollback", {repo: repo.name, sha: sha.value.trim()}, configStatus);
        }, "secondary rollback");
        row.append(all, sha, rb);
        box.append(row);
      }
      return box;
    }));
  }

  // --- logs -----------------------------------------------------------------------

  async function loadLogs() {
    const doc = await api("GET", "/logs");
    $("#logs-sampled").textContent = doc.sampled_at
      ? `sampled ${when(doc.sampled_at)}, every ${doc.period} s` : "not sampled yet";
    fill($("#logs-table tbody"), doc.rows.map(r => {
      const tr = document.createElement("tr");
      tr.append(td(r.node), td(r.log), td(r.subscriber), td(duration(r.lag_seconds), "num"),
        td(String(r.pending_records), "num"), td(r.pending_bytes === null ? "" : String(r.pending_bytes), "num"));
      return tr;
    }));
    const notes = Object.entries(doc.nodes).filter(([, note]) => note);
    fill($("#logs-notes"), notes.map(([n, note]) => {
      const li = document.createElement("li"); li.textContent = `${n}: ${note}`; return li;
    }));
    const now = doc.sampled_at || Date.now() / 1000;
    window.mhaCharts.lineChart($("#logs-chart"), doc.history.map(h => ({
      name: `${h.node}/${h.log} → ${h.subscriber}`, points: h.points.map(p => [p[0], p[1]]),
    })), {xMin: now - 3600, xMax: now, yLabel: "lag (s)", label: "subscriber lag, last hour",
      empty: "no log subscribers sampled yet"});
  }

  // --- audit ----------------------------------------------------------------------

  async function runQuery(ev) {
    ev.preventDefault();
    const q = $("#audit-query").value;
    const errBox = $("#audit-error");
    errBox.hidden = true; errBox.textContent = "";
    try {
      const doc = await api("GET", `/audit?q=${encodeURIComponent(q)}`);
      showAudit(doc);
    } catch (e) {
      errBox.hidden = false;
      if (e.code === "query_syntax") {
        const pos = e.detail.position;
        errBox.append(span(q + "\n"), span(" ".repeat(Math.min(pos, q.length)) + "^ ", "caret"),
          span(`expected ${e.detail.expected}\n${e.message}`));
      } else {
        errBox.textContent = e.message;
      }
      $("#audit-table thead").replaceChildren(); $("#audit-table tbody").replaceChildren();
      $("#audit-chart").replaceChildren();
    }
  }

  function showAudit(doc) {
    const thead = $("#audit-table thead"), tbody = $("#audit-table tbody");
    const headRow = document.createElement("tr");
    if (doc.kind === "available") {
      const fields = ["series", "family", "raw", "hourly", "daily", "first", "last"];
      headRow.append(...fields.map(f => { const th = document.createElement("th"); th.textContent = f; return th; }));
      thead.replaceChildren(headRow);
      fill(tbody, doc.series.map(s => {
        const tr = document.createElement("tr");
        tr.append(...fields.map(f => td(String(s[f] ?? ""))));
        return tr;
      }));
      $("#audit-chart").replaceChildren();
      return;
    }
    const cols = (doc.daily ? ["day"] : []).concat(["cidr"], doc.columns);
    headRow.append(...cols.map(c => { const th = document.createElement("th"); th.textContent = c; return th; }));
    thead.replaceChildren(headRow);
    fill(tbody, doc.rows.map(r => {
      const tr = document.createElement("tr");
      if (doc.daily) tr.append(td(r.day));
      tr.append(td(r.cidr, "mono"), ...doc.columns.map(c => td(String(r.counts[c]), "num")));
      return tr;
    }));
    if (!doc.rows.length) {
      $("#audit-chart").replaceChildren(span("no rows", "muted"));
    } else if (doc.daily) {
      const byDay = {};
      for (const r of doc.rows) {
        byDay[r.day] = (byDay[r.day] || 0) + Object.values(r.counts).reduce((a, b) => a + b, 0);
      }
      window.mhaCharts.barChart($("#audit-chart"), Object.entries(byDay).map(([d, v]) => ({label: d, value: v})),
        {title: "counts per day", label: "counts per day"});
    } else {
      const bars = doc.rows.map(r => ({label: r.cidr,
        value: Object.values(r.counts).reduce((a, b) => a + b, 0)})).sort((a, b) => b.value - a.value);
      window.mhaCharts.barChart($("#audit-chart"), bars, {title: "top talkers", label: "top talkers"});
    }
  }

  // --- commands -------------------------------------------------------------------

  function parseArgs(text) {
    text = text.trim();
    if (!text) return {};
    if (text.startsWith("{")) return JSON.parse(text);
    const args = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf("=");
      if (i < 1) throw new Error(`argument line ${JSON.stringify(line)}: expected KEY=VALUE`);
      args[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    return args;
  }

  async function sendCommand(ev) {
    ev.preventDefault();
    $("#cmd-error").textContent = "";
    const kind = $("#cmd-target").value;
    const target = kind === "all" ? {all: true} : {[kind]: $("#cmd-target-value").value.trim()};
    try {
      const args = parseArgs($("#cmd-args").value);
      const r = await api("POST", "/commands", {command: $("#cmd-name").value.trim(), args, target});
      watching = r.request;
      await loadCommands();
    } catch (e) {
      $("#cmd-error").textContent = e.message;
    }
  }

  async function loadCommands() {
    const [hist, cluster] = await Promise.all([api("GET", "/commands"), api("GET", "/cluster")]);
    const known = new Set();
    for (const m of cluster.members) for (const c of (m.status && m.status.commands) || []) known.add(c);
    const list = $("#cmd-known");
    if (list.options.length !== known.size) {
      list.replaceChildren(...[...known].sort().map(c => {
        const o = document.createElement("option"); o.value = c; return o;
      }));
    }
    fill($("#cmd-history tbody"), hist.requests.map(r => {
      const tr = document.createElement("tr");
      tr.dataset.request = r.id;
      const link = document.createElement("a");
      link.href = "#commands"; link.textContent = r.id; link.className = "mono";
      link.addEventListener("click", () => { watching = r.id; loadCommands(); });
      tr.append(td(link), td(r.command + (r.cancelled ? " (cancelled)" : "")),
        td(`${r.replies}/${r.nodes}`, "num"), td(r.requester),
        td(duration(Date.now() / 1000 - r.created)));
      return tr;
    }));
    if (!watching) return;
    let r;
    try {
      r = await api("GET", `/commands/${watching}`);
    } catch (e) {
      if (e.status === 404) { $("#cmd-progress").textContent = "(collected or expired)"; return; }
      throw e;
    }
    $("#cmd-result").hidden = false;
    $("#cmd-id").textContent = r.id;
    const answered = Object.keys(r.replies).length;
    $("#cmd-progress").textContent = `${r.request.command}: ${answered}/${r.request.nodes.length} answered` +
      (r.complete ? "" : " (waiting...)");
    const rows = Object.entries(r.replies).map(([n, rep]) => {
      const tr = document.createElement("tr"); tr.dataset.node = n;
      const answer = rep.status === "ok" ? JSON.stringify(rep.output) : rep.error;
      tr.append(td(n), td(rep.status, `state-${rep.status}`), td(answer, "mono"));
      return tr;
    });
    for (const n of r.running) { const tr = document.createElement("tr"); tr.dataset.node = n; tr.append(td(n), td("running", "state-running"), td("")); rows.push(tr); }
    for (const n of r.pending) { const tr = document.createElement("tr"); tr.dataset.node = n; tr.append(td(n), td("pending", "state-pending"), td("")); rows.push(tr); }
    fill($("#cmd-replies tbody"), rows);
  }

  // --- start ----------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    $("#login-form").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#audit-form").addEventListener("submit", runQuery);
    $("#cmd-form").addEventListener("submit", sendCommand);
    $("#cmd-target").addEventListener("change", () => {
      $("#cmd-target-value").hidden = $("#cmd-target").value === "all";
    });
    window.addEventListener("hashchange", route);
    try {
      session = await api("GET", "/session");
      started();
    } catch (e) {
      showLogin();
    }
  });
})();
