package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestEventsFanOut: filters by device and type, numbering in publish
// order, batching of a commit's samples per device run, dropping a full
// subscriber without blocking, Close.
func TestEventsFanOut(t *testing.T) {
	e := NewEvents(4)
	all, _ := e.Subscribe(EventFilter{})
	dev, _ := e.Subscribe(EventFilter{Device: "a"})
	pres, _ := e.Subscribe(EventFilter{Types: []string{EventPresence}})
	if _, err := e.Subscribe(EventFilter{Types: []string{"gossip"}}); err == nil {
		t.Error("an unknown type was accepted")
	}
	e.Publish(Event{Type: EventPresence, Device: "a"})
	e.PublishSamples([]telemetry.Sample{
		{Device: "a", Metric: "t", TS: 1, Value: 1}, {Device: "a", Metric: "h", TS: 2, Value: 2},
		{Device: "b", Metric: "t", TS: 3, Value: 3},
	})
	recv := func(s *Subscription) []Event {
		var out []Event
		for {
			select {
			case ev := <-s.C:
				out = append(out, ev)
			default:
				return out
			}
		}
	}
	got := recv(all)
	if len(got) != 3 || got[0].ID != 1 || got[1].ID != 2 || got[2].ID != 3 || got[1].Device != "a" || got[2].Device != "b" {
		t.Fatalf("all: %+v", got)
	}
	if rd := got[1].Data.(ReadingData); len(rd.Samples) != 2 || got[1].TS != 2 {
		t.Errorf("reading event of a: %+v", got[1])
	}
	if got := recv(dev); len(got) != 2 || got[0].Type != EventPresence || got[1].Type != EventReading {
		t.Errorf("device a: %+v", got)
	}
	if got := recv(pres); len(got) != 1 || got[0].Type != EventPresence {
		t.Errorf("presence only: %+v", got)
	}

	// Events others filter out do not fill their buffers.
	for range 10 {
		e.Publish(Event{Type: EventCommand, Device: "c"})
		recv(all)
	}
	if dev.Dropped() || pres.Dropped() || all.Dropped() {
		t.Error("a subscriber was dropped by events it does not take")
	}
	// A subscriber that does not read is dropped when its buffer (4) is
	// full; the others go on.
	stalled, _ := e.Subscribe(EventFilter{})
	for range 5 {
		e.Publish(Event{Type: EventCommand, Device: "c"})
		recv(all)
	}
	if !stalled.Dropped() || e.Stats().Dropped != 1 {
		t.Errorf("stalled subscriber: dropped=%v stats=%+v", stalled.Dropped(), e.Stats())
	}
	n := 0
	for range stalled.C {
		n++
	}
	if n != 4 {
		t.Errorf("the stalled subscriber's channel held %d events, then closed; want 4", n)
	}

	all.Close()
	all.Close() // idempotent
	e.Close()
	for range pres.C { // drains what was buffered, then ends
	}
	late, _ := e.Subscribe(EventFilter{})
	if _, ok := <-late.C; ok {
		t.Error("a subscription after Close is open")
	}
	e.Publish(Event{Type: EventPresence}) // no-op, no panic
	if e.Active() || e.wantReadings.Load() {
		t.Errorf("after Close: active=%v wantReadings=%v", e.Active(), e.wantReadings.Load())
	}
}

// TestEventsRates: per-second counts over the last minute, averaged over
// the seconds since start when younger than a minute.
func TestEventsRates(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	e := NewEvents(1)
	e.now = func() time.Time { return now }
	e.start = now.Add(-time.Hour)
	for i := range 30 {
		e.PublishSamples(make([]telemetry.Sample, 10))
		if i%10 == 0 {
			e.PublishRejection(registry.DeadLetter{})
		}
		now = now.Add(time.Second)
	}
	r := e.Rates()
	if r.ReadingsPerSec != 300.0/60 || r.RejectionsPerSec != 3.0/60 || r.Window != 60 || r.Readings[59] != 10 || r.Readings[29] != 0 {
		t.Errorf("rates = %+v", r)
	}
	e.start = now.Add(-30 * time.Second)
	if r := e.Rates(); r.Window != 30 || r.ReadingsPerSec != 10 {
		t.Errorf("30 s after start: %+v", r)
	}
	now = now.Add(2 * time.Minute)
	if r := e.Rates(); r.ReadingsPerSec != 0 {
		t.Errorf("two idle minutes later: %+v", r)
	}
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	id, typ, data string
}

// sseStream reads a text/event-stream: events on ch, comment lines counted
// in pings.
type sseStream struct {
	resp  *http.Response
	ch    chan sseEvent
	pings atomic.Int32
	retry atomic.Int32
}

func (f *fixture) stream(query string) *sseStream {
	f.t.Helper()
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/v1/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+f.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		f.t.Fatalf("events: %d %v", res.StatusCode, res.Header)
	}
	s := &sseStream{resp: res, ch: make(chan sseEvent, 10000)}
	go func() {
		defer close(s.ch)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.typ != "" {
					s.ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				s.pings.Add(1)
			case strings.HasPrefix(line, "retry: "):
				n, _ := strconv.Atoi(strings.TrimPrefix(line, "retry: "))
				s.retry.Store(int32(n))
			case strings.HasPrefix(line, "id: "):
				ev.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				ev.typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return s
}

func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-s.ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20s")
	}
	return sseEvent{}
}

// TestSSEInOrder: the HTTP stream carries readings (one event per commit
// and device), presence, commands and rejections in publish order, with
// increasing ids, the event type and the JSON event as data; ?device and
// ?types filter; heartbeats and retry: are sent; bad filters are 400/404.
func TestSSEInOrder(t *testing.T) {
	f := newFixture(t, fixtureOpts{heartbeat: 50 * time.Millisecond})
	f.addDevice("o-1", "strict", nil)
	f.addDevice("o-2", "", nil)
	all := f.stream("")
	one := f.stream("?device=o-1")
	rej := f.stream("?types=rejection")
	testkit.Eventually(t, 10*time.Second, func() bool { return f.ev.Stats().Subscribers == 3 }, "three subscribers")

	const n = 200
	for i := range n {
		dev, payload := "o-2", fmt.Sprintf(`{"metrics": {"seq": %d}}`, i)
		if i%2 == 0 {
			dev, payload = "o-1", fmt.Sprintf(`{"metrics": {"temp": %d}}`, i%100)
		}
		if i%50 == 0 {
			payload = `{"metrics": {"temp": 9999}}` // rejected (o-1 is strict)
		}
		f.ingest(dev, payload)
	}
	f.ev.Publish(Event{Type: EventPresence, Device: "o-1", Data: map[string]any{"online": false}})

	var last uint64
	readings := 0
	for readings < n-4 {
		ev := all.next(t)
		id, _ := strconv.ParseUint(ev.id, 10, 64)
		if id <= last {
			t.Fatalf("event id %d after %d", id, last)
		}
		last = id
		var e Event
		if err := json.Unmarshal([]byte(ev.data), &e); err != nil || e.ID != id || e.Type != ev.typ {
			t.Fatalf("event %+v: data %v", ev, err)
		}
		if ev.typ == EventReading {
			readings++
		}
	}
	// o-1's stream: its readings in order (temp 2, 4, ... skipping the
	// rejected ones), then its presence.
	want := 2
	for {
		ev := one.next(t)
		var e struct {
			Device string
			Data   struct{ Samples []LatestSample }
		}
		json.Unmarshal([]byte(ev.data), &e)
		if e.Device != "o-1" {
			t.Fatalf("device filter let through %s", ev.data)
		}
		if ev.typ == EventPresence {
			break
		}
		if ev.typ != EventReading {
			continue
		}
		if want%50 == 0 {
			want += 2
		}
		if got := int(e.Data.Samples[0].Value); got != want%100 {
			t.Fatalf("o-1 reading %d, want %d", got, want%100)
		}
		want += 2
	}
	for range 2 {
		if ev := rej.next(t); ev.typ != EventRejection || !strings.Contains(ev.data, "out_of_range") {
			t.Fatalf("rejection stream: %+v", ev)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return all.pings.Load() >= 3 }, "heartbeats")
	if all.retry.Load() != 3000 {
		t.Errorf("retry = %d, want 3000", all.retry.Load())
	}
	expect(t, "unknown type", f.admin("GET", "/api/v1/events?types=gossip", ""), 400, "bad_request")
	expect(t, "unknown device", f.admin("GET", "/api/v1/events?device=ghost", ""), 404, "not_found")

	// Closing the fan-out (hub shutdown) ends the streams.
	f.ev.Close()
	for range all.ch {
	}
}

// TestSSEStalledClientDropped: a client that opens the stream and never
// reads (a tiny receive buffer, so the hub's writes back up quickly) is
// dropped, while ingest keeps committing: every QoS 1 ingest call returns
// (each returns only after its commit, which publishes to the stalled
// subscriber) and the hub's handler for the stalled stream ends.
func TestSSEStalledClientDropped(t *testing.T) {
	f := newFixture(t, fixtureOpts{buffer: 16})
	f.addDevice("fast", "", nil)
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
		return err
	}}
	conn, err := d.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", f.token)
	testkit.Eventually(t, 10*time.Second, func() bool { return f.ev.Stats().Subscribers == 1 }, "the stalled client subscribed")

	// Big readings, so the socket buffers fill fast.
	var b strings.Builder
	b.WriteString(`{"metrics": {`)
	for i := range 200 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"metric_with_a_long_name_%03d": %d.125`, i, i)
	}
	b.WriteString(`}}`)
	payload := b.String()

	committed := 0
	deadline := time.Now().Add(30 * time.Second)
	for f.ev.Stats().Dropped == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled client was not dropped after %d commits", committed)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := f.ing.Ingest(ctx, "fast", []byte(payload), 1, time.Now())
		cancel()
		if err != nil {
			t.Fatalf("ingest %d: %v", committed, err)
		}
		committed++
	}
	// Ingest goes on after the drop, and the handler ended.
	for i := range 50 {
		if err := f.ingest("fast", payload); err != nil {
			t.Fatalf("ingest after drop %d: %v", i, err)
		}
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return f.ev.Stats().Subscribers == 0 }, "the stalled stream ended")
	t.Logf("dropped after %d commits of 200 samples; ingest kept committing", committed)
}

// TestRecentRejections keeps the last 20 rejections, oldest first, whether
// or not anyone subscribes.
func TestRecentRejections(t *testing.T) {
	e := NewEvents(8)
	if got := e.RecentRejections(); len(got) != 0 {
		t.Fatalf("fresh: %v", got)
	}
	for i := range 25 {
		e.PublishRejection(registry.DeadLetter{ID: int64(i), Device: fmt.Sprint("d", i), Reason: "out_of_range"})
	}
	got := e.RecentRejections()
	if len(got) != 20 || got[0].Device != "d5" || got[19].Device != "d24" {
		t.Errorf("recent = %d events, first %s, last %s; want d5..d24", len(got), got[0].Device, got[len(got)-1].Device)
	}
}
