// Tiny DOM helpers. Text always goes in as text nodes (never innerHTML),
// so device ids, payloads and error messages cannot inject markup.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") {
        el.addEventListener(k.slice(2), v as EventListener);
      } else if (k === "class") {
        el.className = String(v);
      } else if (v === true) {
        el.setAttribute(k, "");
      } else {
        el.setAttribute(k, String(v));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]) {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else if (c !== null && c !== undefined && c !== false) el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el: Element, ...children: (Child | Child[])[]) {
  el.replaceChildren();
  append(el, children);
}

// relTime says how long ago a time was ("12 s ago", "3 min ago").
export function relTime(t: string | number | undefined, now = Date.now()): string {
  if (t === undefined || t === "" || t === 0) return "never";
  const ms = typeof t === "number" ? t : Date.parse(t);
  if (!isFinite(ms)) return "—";
  const s = Math.round((now - ms) / 1000);
  if (s < -5) return "in the future";
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtTime(t: string | number | undefined): string {
  if (t === undefined || t === "" || t === 0) return "—";
  const d = new Date(t);
  return isNaN(d.getTime()) ? "—" : d.toLocaleString();
}

export function fmtNum(v: number): string {
  if (!isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toFixed(a >= 100 ? 1 : 2)).toString();
}

export function debounce<A extends unknown[]>(fn: (...a: A) => void, ms: number): (...a: A) => void {
  let t: number | undefined;
  return (...a: A) => {
    clearTimeout(t);
    t = window.setTimeout(() => fn(...a), ms);
  };
}

// copyButton copies text to the clipboard, saying so briefly.
export function copyButton(text: () => string, label = "Copy"): HTMLButtonElement {
  const b = h("button", { type: "button", class: "btn small" }, label);
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      b.textContent = "Copied";
    } catch {
      // Clipboard needs a secure context; select the text instead.
      b.textContent = "Select and copy";
    }
    setTimeout(() => (b.textContent = label), 1500);
  });
  return b;
}

export function errorBox(err: unknown, retry?: () => void): HTMLElement {
  return h("div", { class: "error-box", role: "alert" },
    h("strong", null, "Something went wrong: "), errText(err),
    retry ? h("button", { type: "button", class: "btn small", onclick: () => retry() }, "Retry") : null);
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function emptyState(title: string, ...body: (Child | Child[])[]): HTMLElement {
  return h("div", { class: "empty" }, h("h3", null, title), h("p", null, ...body));
}

export function badge(state: string): HTMLElement {
  return h("span", { class: `badge state-${state}` }, state);
}
