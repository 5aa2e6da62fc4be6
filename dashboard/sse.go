package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/registry"
)

// Event stream tuning.
const (
	// sseWriteTimeout bounds each write to a client: a client that does not
	// read for this long is cut off (the fan-out has usually dropped it
	// already, as its buffer filled).
	sseWriteTimeout = 10 * time.Second
	// sseRetry is the reconnect delay the browser's EventSource is told.
	sseRetry = 3 * time.Second
	// sseBatch is how many queued events are written before a flush.
	sseBatch = 256
)

// events streams live events as Server-Sent Events:
//
//	id: 42
//	event: reading
//	data: {"id":42,"type":"reading","device":"th-1","ts":...,"data":{...}}
//
// ?device=ID keeps one device's events, ?types=presence,command keeps those
// types. A comment line is sent every Heartbeat so proxies keep the
// connection open. The stream has no history: a client that reconnects
// reloads its state and then follows the stream. A client that falls
// behind is dropped (an "error" event with code "too_slow" is attempted),
// and the browser reconnects.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	if s.Events == nil {
		unavailable(w, "the live event stream")
		return
	}
	v := r.URL.Query()
	f := EventFilter{Device: v.Get("device")}
	if t := v.Get("types"); t != "" {
		f.Types = strings.Split(t, ",")
	}
	if f.Device != "" {
		if _, err := s.Registry.Device(r.Context(), f.Device); errors.Is(err, registry.ErrNotFound) {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q does not exist", f.Device))
			return
		} else if err != nil {
			internalError(w, err)
			return
		}
	}
	sub, err := s.Events.Subscribe(f)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "types: "+err.Error())
		return
	}
	defer sub.Close()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	// flush sends what is buffered, within the write deadline. A failed
	// write (client gone, or too slow to read) ends the stream.
	flush := func() bool {
		if err := rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		return rc.Flush() == nil
	}
	if _, err := fmt.Fprintf(w, "retry: %d\n: connected\n\n", sseRetry.Milliseconds()); err != nil || !flush() {
		return
	}
	heartbeat := time.NewTicker(s.Heartbeat)
	defer heartbeat.Stop()
	var buf []byte
	for {
		select {
		case <-r.Context().Done():
			return
		case <-heartbeat.C:
			if _, err := w.Write([]byte(": ping\n\n")); err != nil || !flush() {
				return
			}
		case ev, ok := <-sub.C:
			if !ok {
				if sub.Dropped() {
					s.m.sseDropped.Inc()
					// Best effort: the client is probably not reading.
					_ = rc.SetWriteDeadline(time.Now().Add(time.Second))
					fmt.Fprintf(w, "event: error\ndata: {\"code\":\"too_slow\",\"message\":\"the stream fell behind and was dropped; reconnect\"}\n\n")
					_ = rc.Flush()
				}
				return
			}
			// Write what is queued, up to a batch, then flush once.
			for n := 0; ; n++ {
				buf = appendEvent(buf[:0], ev)
				if _, err := w.Write(buf); err != nil {
					return
				}
				if n == sseBatch {
					break
				}
				select {
				case ev, ok = <-sub.C:
				default:
					ok = false
				}
				if !ok {
					break
				}
			}
			if !flush() {
				return
			}
		}
	}
}

// appendEvent encodes one event in the SSE wire format. JSON has no raw
// newlines, so the data fits one data: line.
func appendEvent(b []byte, ev Event) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendUint(b, ev.ID, 10)
	b = append(b, "\nevent: "...)
	b = append(b, ev.Type...)
	b = append(b, "\ndata: "...)
	data, err := json.Marshal(ev)
	if err != nil {
		data = []byte(`{"error":"unencodable event"}`)
	}
	b = append(b, data...)
	return append(b, "\n\n"...)
}
