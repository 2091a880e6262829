// The dashboard's JSON API and event stream, with the token in a header (never a cookie or URL).

const TOKEN_KEY = "llmqueue-dashboard-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A token given in the page's address (#token=…, as `llmqueue dashboard` prints it) is kept, then hidden. */
export function takeTokenFromAddress() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", `${location.pathname}#batches`);
  }
}

function headers(extra = {}) {
  const value = token();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : extra;
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

export async function act(path) {
  const response = await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }) });
  const body = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, body };
}

/**
 * Follow /api/events: onSnapshot(reading) for each event; onState("live" | "reconnecting" | reason).
 * Read with fetch (not EventSource) so the token travels in a header; reconnects after a second.
 */
export async function follow(onSnapshot, onState) {
  for (;;) {
    try {
      const response = await fetch("/api/events", { headers: headers({ Accept: "text/event-stream" }) });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        onState(body.error || `HTTP ${response.status}`);
      } else {
        onState("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (data) onSnapshot(JSON.parse(data));
          }
        }
        onState("reconnecting");
      }
    } catch (error) {
      onState("reconnecting");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
