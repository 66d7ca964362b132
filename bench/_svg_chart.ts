/**
 * A small hand-written SVG line chart: panels stacked vertically, each with its own y axis, a
 * shared x axis label per panel, a legend, optional dots on points (e.g. dirty-pass boundaries).
 * No library: the benchmark writes one chart.
 * @module
 */

/** One line in a panel. */
export interface Series {
  label: string;
  color: string;
  /** SVG stroke-dasharray, e.g. "6 3"; solid when absent. */
  dash?: string;
  points: [number, number][];
  /** Points drawn as dots on top of the line. */
  marks?: [number, number][];
}

/** One chart panel. */
export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
}

const W = 860, PANEL_H = 300, LEFT = 78, RIGHT = 190, BOTTOM = 52;

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A "nice" tick step for the range 0..max with about `n` ticks. */
function niceStep(max: number, n = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return String(Math.round(v));
  return String(+v.toPrecision(3));
}

/** Renders the panels into one SVG document; `note` lines go under the title. */
export function lineChart(title: string, panels: Panel[], note = ""): string {
  const notes = note ? note.split("\n") : [];
  const TOP = 34 + 14 * notes.length;
  const H = TOP + panels.length * (PANEL_H + BOTTOM) + 24;
  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
  );
  notes.forEach((n, i) => {
    o.push(`<text x="${W / 2}" y="${38 + 14 * i}" text-anchor="middle" fill="#555">${esc(n)}</text>`);
  });
  panels.forEach((p, k) => {
    const y0 = TOP + k * (PANEL_H + BOTTOM) + 16; // panel top
    const pw = W - LEFT - RIGHT, ph = PANEL_H - 30;
    const all = p.series.flatMap((s) => s.points);
    // At least 1 on each axis, so an all-zero series still gets a readable 0..1 axis.
    const xMax = Math.max(1, ...all.map((q) => q[0]));
    const yMax = Math.max(1, ...all.map((q) => q[1]));
    const xs = niceStep(xMax), ys = niceStep(yMax);
    const xTop = Math.ceil(xMax / xs) * xs, yTop = Math.ceil(yMax / ys) * ys;
    const X = (x: number) => LEFT + (x / xTop) * pw;
    const Y = (y: number) => y0 + ph - (y / yTop) * ph;
    o.push(`<text x="${LEFT}" y="${y0 - 6}" font-weight="bold">${esc(p.title)}</text>`);
    for (let i = 0; i * xs <= xTop * (1 + 1e-9); i++) {
      const x = i * xs;
      o.push(
        `<line x1="${X(x).toFixed(1)}" y1="${y0}" x2="${X(x).toFixed(1)}" y2="${y0 + ph}" stroke="#e4e4e4"/>`,
        `<text x="${X(x).toFixed(1)}" y="${y0 + ph + 16}" text-anchor="middle">${fmt(x)}</text>`,
      );
    }
    for (let i = 0; i * ys <= yTop * (1 + 1e-9); i++) {
      const y = i * ys;
      o.push(
        `<line x1="${LEFT}" y1="${Y(y).toFixed(1)}" x2="${LEFT + pw}" y2="${
          Y(y).toFixed(1)
        }" stroke="#e4e4e4"/>`,
        `<text x="${LEFT - 6}" y="${(Y(y) + 4).toFixed(1)}" text-anchor="end">${fmt(y)}</text>`,
      );
    }
    o.push(
      `<rect x="${LEFT}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
      `<text x="${LEFT + pw / 2}" y="${y0 + ph + 34}" text-anchor="middle">${esc(p.xLabel)}</text>`,
      `<text transform="translate(${LEFT - 52} ${y0 + ph / 2}) rotate(-90)" text-anchor="middle">${
        esc(p.yLabel)
      }</text>`,
    );
    p.series.forEach((s, i) => {
      if (s.points.length > 0) {
        const d = s.points.map((q, j) => `${j ? "L" : "M"}${X(q[0]).toFixed(1)},${Y(q[1]).toFixed(1)}`).join(
          " ",
        );
        o.push(
          `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${
            s.dash ? ` stroke-dasharray="${s.dash}"` : ""
          }/>`,
        );
      }
      for (const q of s.marks ?? []) {
        o.push(`<circle cx="${X(q[0]).toFixed(1)}" cy="${Y(q[1]).toFixed(1)}" r="3.5" fill="${s.color}"/>`);
      }
      const ly = y0 + 14 + i * 20, lx = LEFT + pw + 14;
      o.push(
        `<line x1="${lx}" y1="${ly - 4}" x2="${lx + 28}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${
          s.dash ? ` stroke-dasharray="${s.dash}"` : ""
        }/>`,
        `<text x="${lx + 34}" y="${ly}">${esc(s.label)}</text>`,
      );
    });
  });
  o.push("</svg>");
  return o.join("\n") + "\n";
}
