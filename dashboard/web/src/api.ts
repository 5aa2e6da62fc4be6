// The hub's JSON API (see /api/v1/openapi.json). Requests ride on the
// session cookie; state-changing ones carry the session's CSRF token.

export interface LatestSample { metric: string; ts: number; value: number }
export interface Device {
  id: string; type: string; labels: Record<string, string>;
  created_at: string; last_seen?: string; online: boolean; latest?: LatestSample[];
}
export interface DevicePage { devices: Device[]; next: string }
export interface MQTTCredentials { broker?: string; client_id: string; username: string; topic: string }
export interface CreatedDevice { device: Device; token: string; mqtt: MQTTCredentials }
export interface Point { ts: number; value: number }
export interface Rates { readings_per_sec: number; rejections_per_sec: number; window_sec: number; readings: number[]; rejections: number[] }
export interface Summary { devices: { total: number; online: number; offline: number }; rates: Rates; watchers: number; time: string; recent_rejections?: HubEvent[] }
export interface MetricSpec { type: "number" | "bool" | "string"; unit?: string; min?: number; max?: number }
export interface DeviceType { name: string; metrics?: Record<string, MetricSpec>; unknown_metrics?: string }
export interface DeadLetter {
  id: number; device: string; topic: string; payload: string; reason: string; detail: string;
  received_at: string; replayed_at?: string; replay_error?: string;
}
export interface DeadLetterPage { dead_letters: DeadLetter[]; next: string }
export interface Transition { command_id: string; from: string; to: string; at: string; detail?: string }
export interface Command {
  id: string; device: string; name: string; params: unknown; idempotency_key?: string; state: string;
  created_at: string; updated_at: string; expires_at?: string; result?: unknown; error?: string;
  final: boolean; history?: Transition[];
}
export interface TwinDoc { doc: Record<string, unknown> | null; version: number; updated_at?: string }
export interface TwinView { device: string; desired: TwinDoc; reported: TwinDoc; delta: Record<string, unknown> | null }
export interface APIToken { id: string; name: string; created_at: string; last_used?: string }
export interface CreatedToken { token: APIToken; secret: string }
export interface SessionInfo { auth: string; token_id: string; token_name: string; csrf_token?: string; expires_at?: string }
export interface Info { version?: string; mqtt?: string; ws?: string; tls?: string; store?: string }
export interface HubEvent { id: number; type: string; device: string; ts: number; data: any }

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

let csrf = "";
let onUnauthorized: () => void = () => {};

export function setCSRF(token: string) { csrf = token; }
export function setUnauthorizedHandler(fn: () => void) { onUnauthorized = fn; }

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf;
  let res: Response;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", "the hub did not answer (is it running?)");
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: any = undefined;
  try { data = text ? JSON.parse(text) : undefined; } catch { /* not JSON */ }
  if (!res.ok) {
    const code = data?.error?.code ?? "http_" + res.status;
    const msg = data?.error?.message ?? `${res.status} ${res.statusText}`;
    if (res.status === 401 && path !== "/api/v1/session") onUnauthorized();
    throw new ApiError(res.status, code, msg);
  }
  return data as T;
}

export const get = <T>(path: string) => api<T>("GET", path);
export const enc = encodeURIComponent;
