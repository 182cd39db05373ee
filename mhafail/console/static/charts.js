// mhafail console charts: small line and bar charts drawn as inline SVG (no library).
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0969da", "#bf3989",
    "#57606a"];

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (Math.abs(v) >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // series: [{name, points: [[x, y], ...]}]; x in seconds since the epoch.
  function lineChart(container, series, opts) {
    opts = opts || {};
    const W = 900, H = 250, L = 50, R = 24, T = 24, B = 28;
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": opts.label || "chart"});
    const xs = series.flatMap(s => s.points.map(p => p[0]));
    const now = opts.xMax || (xs.length ? Math.max(...xs) : Date.now() / 1000);
    const x0 = opts.xMin || (now - 3600);
    const yMax = niceMax(Math.max(0, ...series.flatMap(s => s.points.map(p => p[1]))));
    const sx = x => L + (W - L - R) * (x - x0) / Math.max(1, now - x0);
    const sy = y => H - B - (H - T - B) * y / yMax;
    for (let i = 0; i <= 4; i++) {
      const y = yMax * i / 4;
      svg.appendChild(el("line", {class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y)}));
      svg.appendChild(el("text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end"}, fmt(y)));
    }
    for (let i = 0; i <= 6; i++) {
      const x = x0 + (now - x0) * i / 6;
      const d = new Date(x * 1000);
      const label = d.toTimeString().slice(0, 5);
      svg.appendChild(el("text", {x: sx(x), y: H - 8, "text-anchor": "middle"}, label));
    }
    svg.appendChild(el("line", {class: "axis", x1: L, x2: L, y1: T, y2: H - B}));
    svg.appendChild(el("line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
    if (opts.yLabel) {
      svg.appendChild(el("text", {x: L, y: 12, "text-anchor": "middle"}, opts.yLabel));
    }
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = s.points.filter(p => p[0] >= x0).map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
      if (pts.length === 1) {
        const [cx, cy] = pts[0].split(",");
        svg.appendChild(el("circle", {cx, cy, r: 3, fill: color}));
      } else if (pts.length > 1) {
        svg.appendChild(el("polyline", {points: pts.join(" "), fill: "none", stroke: color,
          "stroke-width": 2}));
      }
    });
    container.replaceChildren(svg);
    if (series.length) {
      const legend = document.createElement("div");
      legend.className = "legend";
      series.forEach((s, i) => {
        const item = document.createElement("span");
        item.className = "pill";
        item.style.borderLeft = `12px solid ${COLORS[i % COLORS.length]}`;
        item.textContent = s.name;
        legend.appendChild(item);
      });
      container.appendChild(legend);
    } else {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = opts.empty || "no data yet";
      container.appendChild(empty);
    }
  }

  // bars: [{label, value}] drawn horizontally, largest scale first.
  function barChart(container, bars, opts) {
    opts = opts || {};
    const shown = bars.slice(0, opts.max || 20);
    const W = 900, row = 22, L = 170, R = 70, T = 6;
    const H = T * 2 + row * Math.max(1, shown.length);
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": opts.label || "bar chart"});
    const vMax = niceMax(Math.max(0, ...shown.map(b => b.value)));
    shown.forEach((b, i) => {
      const y = T + i * row;
      const w = (W - L - R) * b.value / vMax;
      svg.appendChild(el("text", {x: L - 8, y: y + row / 2 + 4, "text-anchor": "end"}, b.label));
      svg.appendChild(el("rect", {class: "bar", x: L, y: y + 3, width: Math.max(1, w),
        height: row - 6, rx: 2}));
      svg.appendChild(el("text", {x: L + w + 6, y: y + row / 2 + 4}, fmt(b.value)));
    });
    container.replaceChildren(svg);
    if (opts.title) {
      const cap = document.createElement("p");
      cap.className = "muted";
      cap.textContent = opts.title;
      container.prepend(cap);
    }
  }

  window.mhaCharts = {lineChart, barChart};
})();
