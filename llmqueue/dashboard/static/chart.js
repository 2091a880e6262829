// A small line chart drawn as inline SVG: series over time against horizontal limit lines.

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function short(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return `${+value.toFixed(1)}`;
}

/**
 * series: [{label, cls, points: [[unixSeconds, value], ...]}]; limits: [{label, value}].
 * Returns an <svg> element, width 100% of its box, with a legend.
 */
export function lineChart({ series, limits = [], title = "", width = 560, height = 150 }) {
  const pad = { left: 44, right: 10, top: 18, bottom: 20 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  const all = series.flatMap((s) => s.points);
  const times = all.map((p) => p[0]);
  const t1 = times.length ? Math.max(...times) : Date.now() / 1000;
  const t0 = Math.min(times.length ? Math.min(...times) : t1, t1 - 60);
  const top = niceMax(Math.max(0, ...all.map((p) => p[1]), ...limits.map((l) => l.value)) * 1.05);
  const x = (t) => pad.left + ((t - t0) / Math.max(1, t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);

  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: pad.left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, short(v)));
  }
  svg.append(el("text", { x: pad.left, y: height - 4, class: "axis" }, `${Math.round((t1 - t0) / 60)} min ago`));
  svg.append(el("text", { x: width - pad.right, y: height - 4, class: "axis", "text-anchor": "end" }, "now"));
  for (const limit of limits) {
    svg.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y(limit.value), y2: y(limit.value), class: "limit" }));
    svg.append(el("text", { x: width - pad.right - 2, y: y(limit.value) - 3, class: "limit-label", "text-anchor": "end" }, limit.label));
  }
  series.forEach((s, i) => {
    if (s.points.length > 1) {
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      svg.append(el("path", { d, class: `series ${s.cls || `s${i}`}` }));
    }
    svg.append(el("text", { x: pad.left + 6 + i * 150, y: 12, class: `legend ${s.cls || `s${i}`}` }, `— ${s.label}`));
  });
  if (title) svg.append(el("title", {}, title));
  return svg;
}
