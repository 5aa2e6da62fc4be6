import { api, get, enc, type Device, type DevicePage, type LatestSample, type CreatedDevice, type Info } from "../api";
import { h, clear, errorBox, relTime, fmtNum, debounce, copyButton, errText, emptyState } from "../dom";
import { openStream } from "../live";
import type { Ctx } from "../main";

const ROW = 38;          // px per row of the virtual list
const MAX_ROWS = 20000;  // the list loads at most this many (narrow the filter beyond)
const PAGE = 1000;       // devices per API page
const LATEST_TTL = 15000;

type SortKey = "id" | "type" | "online" | "last_seen";

// devicesPage lists the fleet. Server-side filters (search, type, online,
// label) pick the devices, which load a page of 1,000 at a time into
// memory; the list then sorts on any column in the browser and renders
// only the rows in view, so 10,000 devices scroll smoothly. Latest values
// are fetched for the rows in view only, and presence comes live.
export function devicesPage(ctx: Ctx): () => void {
  let rows: Device[] = [];
  let sortKey: SortKey = "id";
  let sortDir = 1;
  let loadSeq = 0;
  let truncated = false;
  const latest = new Map<string, { at: number; samples: LatestSample[] }>();

  const search = h("input", { type: "search", id: "device-search", placeholder: "Search ids…", value: ctx.params.get("search") ?? "" });
  const typeSel = h("select", { id: "device-type" }, h("option", { value: "" }, "Any type"), ...ctx.types.map((t) => h("option", { value: t.name }, t.name)));
  const onlineSel = h("select", { id: "device-online" }, h("option", { value: "" }, "Online or not"), h("option", { value: "true" }, "Online"), h("option", { value: "false" }, "Offline"));
  const labelIn = h("input", { type: "text", id: "device-label", placeholder: "label: key=value", size: 16 });
  const status = h("span", { class: "muted", id: "device-count" });
  const addBtn = h("button", { type: "button", class: "btn primary", id: "add-device" }, "Add device");
  const err = h("div");
  const head = h("div", { class: "vhead" });
  const inner = h("div", { class: "vinner" });
  const viewport = h("div", { class: "vport", id: "device-list" }, inner);
  const empty = h("div");

  clear(ctx.main,
    h("div", { class: "page-head" }, h("h1", null, "Devices"), h("div", { class: "actions" }, addBtn)),
    h("div", { class: "toolbar" }, search, typeSel, onlineSel, labelIn, status),
    err, empty,
    h("div", { class: "vtable" }, head, viewport));

  const cols: [SortKey | null, string, string][] = [
    ["online", "", "c-dot"], ["id", "Device", "c-id"], ["type", "Type", "c-type"], [null, "Labels", "c-labels"],
    ["last_seen", "Last seen", "c-seen"], [null, "Latest values", "c-latest"],
  ];
  const renderHead = () => clear(head, cols.map(([key, label, cls]) => {
    const el = h("div", { class: "vcell " + cls + (key ? " sortable" : "") }, label || (key === "online" ? "●" : ""),
      key === sortKey ? (sortDir > 0 ? " ▲" : " ▼") : "");
    if (key) el.addEventListener("click", () => { sortDir = key === sortKey ? -sortDir : 1; sortKey = key; sortRows(); renderHead(); viewport.scrollTop = 0; render(); });
    return el;
  }));

  const sortRows = () => {
    const k = sortKey, d = sortDir;
    rows.sort((a, b) => {
      let c = 0;
      if (k === "id") c = a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
      else if (k === "type") c = a.type.localeCompare(b.type) || (a.id < b.id ? -1 : 1);
      else if (k === "online") c = Number(b.online) - Number(a.online) || (a.id < b.id ? -1 : 1);
      else c = (Date.parse(b.last_seen ?? "") || 0) - (Date.parse(a.last_seen ?? "") || 0);
      return c * d;
    });
  };

  const specOf = (d: Device, metric: string) => ctx.types.find((t) => t.name === d.type)?.metrics?.[metric];
  const unitOf = (d: Device, metric: string) => specOf(d, metric)?.unit ?? "";
  const fmtValue = (d: Device, s: LatestSample) => (specOf(d, s.metric)?.type === "bool" ? (s.value ? "true" : "false") : fmtNum(s.value));
  const latestText = (d: Device) => {
    const l = latest.get(d.id);
    if (!l) return h("span", { class: "muted" }, "…");
    if (l.samples.length === 0) return h("span", { class: "muted" }, "no data");
    return l.samples.slice(0, 4).map((s) => h("span", { class: "kv" }, h("span", { class: "k" }, s.metric), " ", fmtValue(d, s), unitOf(d, s.metric) ? " " + unitOf(d, s.metric) : ""));
  };

  let frame = 0;
  const render = () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => {
      inner.style.height = rows.length * ROW + "px";
      const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 5);
      const last = Math.min(rows.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW) + 5);
      const out: HTMLElement[] = [];
      for (let i = first; i < last; i++) {
        const d = rows[i];
        out.push(h("div", { class: "vrow" + (i % 2 ? " odd" : ""), style: `top:${i * ROW}px`, "data-id": d.id },
          h("div", { class: "vcell c-dot" }, h("span", { class: "dot " + (d.online ? "on" : "off"), title: d.online ? "online" : "offline" })),
          h("div", { class: "vcell c-id" }, h("a", { href: `#/devices/${enc(d.id)}` }, d.id)),
          h("div", { class: "vcell c-type" }, d.type || h("span", { class: "muted" }, "—")),
          h("div", { class: "vcell c-labels" }, Object.entries(d.labels ?? {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
          h("div", { class: "vcell c-seen", title: d.last_seen ?? "" }, d.online ? "now" : relTime(d.last_seen)),
          h("div", { class: "vcell c-latest" }, latestText(d))));
      }
      inner.replaceChildren(...out);
      fetchLatest(rows.slice(first, last).map((d) => d.id));
    });
  };
  viewport.addEventListener("scroll", render, { passive: true });

  // Latest values of the rows in view, 200 devices per request.
  const fetchLatest = debounce(async (ids: string[]) => {
    const now = Date.now();
    const want = ids.filter((id) => (latest.get(id)?.at ?? 0) < now - LATEST_TTL);
    if (want.length === 0) return;
    for (const id of want) if (!latest.has(id)) latest.set(id, { at: now, samples: [] });
    try {
      for (let i = 0; i < want.length; i += 200) {
        const q = want.slice(i, i + 200).map((id) => "device=" + enc(id)).join("&");
        const r = await get<{ latest: Record<string, LatestSample[]> }>("/api/v1/telemetry/latest?" + q);
        for (const [id, s] of Object.entries(r.latest)) latest.set(id, { at: Date.now(), samples: s });
      }
      render();
    } catch { /* the next scroll retries */ }
  }, 120);

  const load = async () => {
    const seq = ++loadSeq;
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (search.value.trim()) q.set("search", search.value.trim());
    if (typeSel.value) q.set("type", typeSel.value);
    if (onlineSel.value) q.set("online", onlineSel.value);
    const label = labelIn.value.trim();
    if (label) {
      if (!label.includes("=")) { clear(err, errorBox("the label filter must look like key=value")); return; }
      q.set("label", label);
    }
    status.textContent = "Loading…";
    clear(err);
    viewport.scrollTop = 0;
    const got: Device[] = [];
    truncated = false;
    try {
      let after = "";
      for (;;) {
        if (after) q.set("after", after);
        const page = await get<DevicePage>("/api/v1/devices?" + q);
        if (seq !== loadSeq) return; // a newer filter took over
        got.push(...page.devices);
        rows = got.slice();
        sortRows();
        render();
        status.textContent = `${got.length} devices…`;
        if (!page.next) break;
        if (got.length >= MAX_ROWS) { truncated = true; break; }
        after = page.next;
      }
      status.textContent = truncated ? `First ${got.length} devices: narrow the filter to see the rest` : `${got.length} device${got.length === 1 ? "" : "s"}`;
      const filtered = q.has("search") || q.has("type") || q.has("online") || q.has("label");
      clear(empty, got.length > 0 ? null : filtered
        ? emptyState("No device matches", "Change or clear the filters.")
        : emptyState("No devices yet", "Add one with the button above, or start the simulator: ",
          h("code", null, "devicesim run --profile configs/devicesim/fleet.yaml --provision"), " (see the README)."));
    } catch (e) {
      if (seq === loadSeq) { status.textContent = ""; clear(err, errorBox(e, load)); }
    }
  };

  const reload = debounce(load, 250);
  search.addEventListener("input", reload);
  labelIn.addEventListener("input", reload);
  typeSel.addEventListener("change", load);
  onlineSel.addEventListener("change", load);
  addBtn.addEventListener("click", () => addDeviceDialog(ctx.info, ctx, () => load()));

  const stop = openStream({
    types: ["presence"],
    onEvent: (e) => {
      const d = rows.find((r) => r.id === e.device);
      if (!d) return;
      d.online = !!e.data?.online;
      d.last_seen = new Date(e.ts).toISOString();
      render();
    },
  });
  renderHead();
  load();
  const refresh = window.setInterval(render, 10000); // relative times and latest values
  return () => { stop(); clearInterval(refresh); cancelAnimationFrame(frame); };
}

// brokerHost turns the broker's bound address into one a device can use.
export function brokerHostPort(info: Info): [string, string] {
  const addr = info.mqtt ?? ":1883";
  const i = addr.lastIndexOf(":");
  let host = addr.slice(0, i).replace(/^\[|\]$/g, "");
  const port = addr.slice(i + 1) || "1883";
  if (host === "" || host === "::" || host === "0.0.0.0") host = location.hostname;
  return [host, port];
}

export function mosquittoExample(info: Info, id: string, token: string): string {
  const [host, port] = brokerHostPort(info);
  const q = (s: string) => "'" + s.replace(/'/g, "'\\''") + "'";
  return `mosquitto_pub -h ${host} -p ${port} -q 1 -i ${q(id)} -u ${q(id)} -P ${q(token)} \\\n  -t ${q(`devices/${id}/telemetry`)} -m '{"metrics": {"temperature": 21.5}}'`;
}

// tokenPanel shows a device token once, with a ready-to-run example.
export function tokenPanel(info: Info, id: string, token: string): HTMLElement {
  const example = mosquittoExample(info, id, token);
  return h("div", { class: "token-panel" },
    h("p", null, h("strong", null, "Copy the token now: "), "the hub keeps only its hash and will not show it again."),
    h("div", { class: "codeline" }, h("code", { id: "new-token" }, token), copyButton(() => token)),
    h("p", null, "Publish a reading as this device (MQTT user and client id = device id, password = token):"),
    h("div", { class: "codeline" }, h("pre", { id: "mqtt-example" }, example), copyButton(() => example)));
}

export function addDeviceDialog(info: Info, ctx: Ctx, onCreated: () => void) {
  const id = h("input", { type: "text", id: "new-id", required: true, maxlength: 64, placeholder: "e.g. th-0042", pattern: "[A-Za-z0-9_.:\\-]+" });
  const type = h("select", { id: "new-type" }, h("option", { value: "" }, "(no type: accept any metric)"), ...ctx.types.map((t) => h("option", { value: t.name }, t.name)));
  const labels = h("input", { type: "text", id: "new-labels", placeholder: "site=lab, floor=2" });
  const msg = h("p", { class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "btn primary", id: "create-device" }, "Create");
  const cancel = h("button", { type: "button", class: "btn ghost" }, "Cancel");
  const form = h("form", { class: "dialog-body" },
    h("h2", null, "Add a device"),
    h("label", { for: "new-id" }, "Device id"), id,
    h("label", { for: "new-type" }, "Type"), type,
    h("label", { for: "new-labels" }, "Labels"), labels,
    msg, h("div", { class: "actions" }, cancel, submit));
  const dlg = h("dialog", { class: "dialog", id: "add-dialog" }, form);
  document.body.appendChild(dlg);
  const close = () => { dlg.close(); dlg.remove(); };
  cancel.addEventListener("click", close);
  dlg.addEventListener("cancel", () => dlg.remove());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const lab: Record<string, string> = {};
    for (const part of labels.value.split(",").map((s) => s.trim()).filter(Boolean)) {
      const i = part.indexOf("=");
      if (i <= 0) { msg.textContent = `label "${part}" must look like key=value`; return; }
      lab[part.slice(0, i).trim()] = part.slice(i + 1).trim();
    }
    submit.disabled = true;
    try {
      const r = await api<CreatedDevice>("POST", "/api/v1/devices", { id: id.value.trim(), type: type.value, labels: lab });
      const done = h("button", { type: "button", class: "btn primary", id: "dialog-done" }, "Done");
      done.addEventListener("click", () => { close(); onCreated(); });
      clear(dlg, h("div", { class: "dialog-body" },
        h("h2", null, "Device ", h("a", { href: `#/devices/${enc(r.device.id)}` }, r.device.id), " created"),
        tokenPanel(info, r.device.id, r.token),
        h("div", { class: "actions" }, done)));
    } catch (err) {
      msg.textContent = errText(err);
      submit.disabled = false;
    }
  });
  dlg.showModal();
  id.focus();
}
