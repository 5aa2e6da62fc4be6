// Live events over Server-Sent Events. Each page opens the stream it needs
// (one device's, or presence/commands/rejections only) and closes it when
// it leaves. The browser's EventSource reconnects by itself; a reconnect
// means events were missed, so pages reload their state on "open".

import type { HubEvent } from "./api";

export type LiveState = "connecting" | "live" | "offline";
type Listener = (s: LiveState) => void;

const stateListeners = new Set<Listener>();
let open = 0;
let state: LiveState = "offline";

function setState(s: LiveState) {
  state = s;
  for (const l of stateListeners) l(s);
}

export function onLiveState(l: Listener): () => void {
  stateListeners.add(l);
  l(state);
  return () => stateListeners.delete(l);
}

export interface StreamOptions {
  device?: string;
  types?: string[];
  onEvent: (ev: HubEvent) => void;
  // onOpen runs on every (re)connection, after which no event is missed.
  onOpen?: () => void;
}

export function openStream(o: StreamOptions): () => void {
  const q = new URLSearchParams();
  if (o.device) q.set("device", o.device);
  if (o.types?.length) q.set("types", o.types.join(","));
  const es = new EventSource("/api/v1/events" + (q.size ? "?" + q : ""));
  open++;
  setState("connecting");
  const handler = (e: MessageEvent) => {
    try { o.onEvent(JSON.parse(e.data) as HubEvent); } catch (err) { console.error("bad event", err); }
  };
  for (const t of ["reading", "presence", "command", "rejection"]) es.addEventListener(t, handler as EventListener);
  es.onopen = () => { setState("live"); o.onOpen?.(); };
  es.onerror = () => setState(es.readyState === EventSource.CLOSED ? "offline" : "connecting");
  return () => {
    es.close();
    open--;
    if (open === 0) setState("offline");
  };
}
