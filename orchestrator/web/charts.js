// Small line charts of an agent's time series (the last hour), as SVG polylines.

const NS = "http://www.w3.org/2000/svg";

export function lineChart(title, points, field, format) {
  const wrap = document.createElement("div");
  wrap.className = "chart";
  const values = points.map((p) => p[field]).filter((v) => typeof v === "number");
  const label = document.createElement("div");
  label.className = "label";
  const name = document.createElement("span");
  name.textContent = title;
  const last = document.createElement("span");
  last.textContent = values.length ? format(values[values.length - 1]) : "no data";
  label.append(name, last);
  wrap.appendChild(label);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 300 60");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title} over the last hour`);
  if (values.length) {
    const min = Math.min(...values);
    const max = Math.max(...values);
    const span = max - min || 1;
    const step = values.length > 1 ? 300 / (values.length - 1) : 0;
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", values.map((v, i) => `${(i * step).toFixed(1)},${(56 - ((v - min) / span) * 52).toFixed(1)}`).join(" "));
    svg.appendChild(line);
  }
  wrap.appendChild(svg);
  return wrap;
}
