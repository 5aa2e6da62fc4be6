package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestInsertCommand(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "dev-c", nil)
	mustCreate(t, r, "dev-d", nil)
	t0 := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)

	first, created, err := r.InsertCommand(ctx, Command{Device: "dev-c", Name: "reboot", Params: json.RawMessage(`{"delay":5}`),
		IdempotencyKey: "k1", CreatedAt: t0, ExpiresAt: t0.Add(time.Minute)})
	if err != nil || !created {
		t.Fatalf("InsertCommand = %v, %v", created, err)
	}
	if first.ID == "" || first.State != CommandQueued || !first.UpdatedAt.Equal(t0) || !first.ExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("inserted = %+v", first)
	}
	got, err := r.Command(ctx, first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Device != "dev-c" || got.Name != "reboot" || string(got.Params) != `{"delay":5}` || got.IdempotencyKey != "k1" ||
		!got.CreatedAt.Equal(t0) || !got.ExpiresAt.Equal(first.ExpiresAt) || got.Result != nil || got.Error != "" {
		t.Errorf("Command() = %+v", got)
	}

	tests := []struct {
		name        string
		c           Command
		wantCreated bool
		wantID      string // "" = any new id
		wantErr     error
	}{
		{"same key returns existing", Command{Device: "dev-c", Name: "other", IdempotencyKey: "k1"}, false, first.ID, nil},
		{"same key other device is new", Command{Device: "dev-d", Name: "reboot", IdempotencyKey: "k1"}, true, "", nil},
		{"no key always new", Command{Device: "dev-c", Name: "reboot"}, true, "", nil},
		{"no key again new", Command{Device: "dev-c", Name: "reboot"}, true, "", nil},
		{"caller id", Command{ID: "my-cmd-1", Device: "dev-c", Name: "ping"}, true, "my-cmd-1", nil},
		{"caller id taken", Command{ID: "my-cmd-1", Device: "dev-c", Name: "ping"}, false, "", ErrExists},
		{"unknown device", Command{Device: "ghost", Name: "ping"}, false, "", ErrNotFound},
		{"invalid device id", Command{Device: "a/b", Name: "ping"}, false, "", ErrInvalid},
		{"empty name", Command{Device: "dev-c"}, false, "", ErrInvalid},
		{"name with slash", Command{Device: "dev-c", Name: "a/b"}, false, "", ErrInvalid},
		{"bad id", Command{ID: "x#y", Device: "dev-c", Name: "ping"}, false, "", ErrInvalid},
		{"bad params", Command{Device: "dev-c", Name: "ping", Params: json.RawMessage(`{`)}, false, "", ErrInvalid},
		{"not queued", Command{Device: "dev-c", Name: "ping", State: CommandSent}, false, "", ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, created, err := r.InsertCommand(ctx, tt.c)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if created != tt.wantCreated {
				t.Errorf("created = %v, want %v", created, tt.wantCreated)
			}
			if tt.wantID != "" && c.ID != tt.wantID {
				t.Errorf("id = %q, want %q", c.ID, tt.wantID)
			}
			if tt.wantID == "" && c.ID == first.ID {
				t.Error("new command got the existing id")
			}
			if created && string(c.Params) == "" {
				t.Error("params not defaulted")
			}
		})
	}

	// Concurrent inserts with one key make one command.
	var wg sync.WaitGroup
	ids := make(chan string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := r.InsertCommand(ctx, Command{Device: "dev-d", Name: "x", IdempotencyKey: "race"})
			if err != nil {
				t.Error(err)
				return
			}
			ids <- c.ID
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		seen[id] = true
	}
	if len(seen) != 1 {
		t.Errorf("concurrent idempotent inserts made %d commands", len(seen))
	}
}

func TestTransitionCommand(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "dev-t", nil)
	t0 := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	c, _, err := r.InsertCommand(ctx, Command{Device: "dev-t", Name: "reboot", CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}

	q, s, d := CommandQueued, CommandSent, CommandDelivered
	steps := []struct {
		name      string
		from      []CommandState
		to        CommandState
		result    string
		errText   string
		wantErr   error
		wantState CommandState
	}{
		{"queued->sent", []CommandState{q}, s, "", "", nil, s},
		{"stale: queued->sent again", []CommandState{q}, s, "", "", ErrConflict, s},
		{"sent->delivered", []CommandState{q, s}, d, "", "", nil, d},
		{"unknown to-state", []CommandState{d}, "exploded", "", "", ErrInvalid, d},
		{"unknown from-state", []CommandState{"nope"}, CommandFailed, "", "", ErrInvalid, d},
		{"no from", nil, CommandFailed, "", "", ErrInvalid, d},
		{"bad result JSON", []CommandState{d}, CommandSucceeded, "{", "", ErrInvalid, d},
		{"delivered->succeeded with result", []CommandState{q, s, d}, CommandSucceeded, `{"uptime":0}`, "", nil, CommandSucceeded},
		{"terminal: succeeded->failed refused", []CommandState{q, s, d}, CommandFailed, "", "late", ErrConflict, CommandSucceeded},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			at := t0.Add(time.Duration(i+1) * time.Second)
			got, err := r.TransitionCommand(ctx, c.ID, st.from, st.to, at, json.RawMessage(st.result), st.errText, "step "+st.name)
			if st.wantErr != nil {
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("err = %v, want %v", err, st.wantErr)
				}
				if st.wantErr == ErrConflict && !strings.Contains(err.Error(), string(st.wantState)) {
					t.Errorf("conflict error %q does not name the current state %q", err, st.wantState)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if got.State != st.to || !got.UpdatedAt.Equal(at) {
				t.Errorf("returned %+v", got)
			}
			cur, err := r.Command(ctx, c.ID)
			if err != nil || cur.State != st.wantState {
				t.Errorf("state now %q, %v; want %q", cur.State, err, st.wantState)
			}
		})
	}
	final, _ := r.Command(ctx, c.ID)
	if string(final.Result) != `{"uptime":0}` || final.Error != "" {
		t.Errorf("final = %+v", final)
	}
	if _, err := r.TransitionCommand(ctx, "missing", []CommandState{q}, s, t0, nil, "", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("transition unknown = %v", err)
	}

	// History: the initial queued plus the three that succeeded, oldest first.
	hist, err := r.CommandHistory(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hist {
		got = append(got, fmt.Sprintf("%s>%s", h.From, h.To))
	}
	if strings.Join(got, " ") != ">queued queued>sent sent>delivered delivered>succeeded" {
		t.Fatalf("history = %v", got)
	}
	if !hist[0].At.Equal(t0) || !hist[1].At.Equal(t0.Add(time.Second)) || hist[1].Detail != "step queued->sent" {
		t.Errorf("history times/details = %+v", hist)
	}
	if _, err := r.CommandHistory(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("history of unknown = %v", err)
	}

	// Failure keeps the error text.
	c2, _, _ := r.InsertCommand(ctx, Command{Device: "dev-t", Name: "flash"})
	f, err := r.TransitionCommand(ctx, c2.ID, []CommandState{q}, CommandFailed, time.Time{}, nil, "disk full", "")
	if err != nil || f.Error != "disk full" || f.State != CommandFailed {
		t.Errorf("failed transition = %+v, %v", f, err)
	}
}

// TestTransitionCommandRace: of many concurrent compare-and-set attempts
// from the same state, exactly one wins.
func TestTransitionCommandRace(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "dev-race", nil)
	c, _, err := r.InsertCommand(ctx, Command{Device: "dev-race", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		wins, conflicts int
	)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.TransitionCommand(ctx, c.ID, []CommandState{CommandQueued}, CommandSent, time.Time{}, nil, "", "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, ErrConflict):
				conflicts++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 9 {
		t.Errorf("wins %d conflicts %d; want 1 and 9", wins, conflicts)
	}
}

func TestCommandListing(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "a", nil)
	mustCreate(t, r, "b", nil)
	t0 := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)

	// c1..c6; c3 and c4 share a creation time (tie broken by insertion).
	specs := []struct {
		id, dev string
		at      time.Time
	}{
		{"c1", "a", t0},
		{"c2", "b", t0.Add(1 * time.Second)},
		{"c3", "a", t0.Add(2 * time.Second)},
		{"c4", "a", t0.Add(2 * time.Second)},
		{"c5", "b", t0.Add(3 * time.Second)},
		{"c0", "a", t0.Add(-time.Second)}, // inserted last, created first
	}
	for _, s := range specs {
		if _, _, err := r.InsertCommand(ctx, Command{ID: s.id, Device: s.dev, Name: "n", CreatedAt: s.at}); err != nil {
			t.Fatal(err)
		}
	}
	move := func(id string, to CommandState) {
		t.Helper()
		if _, err := r.TransitionCommand(ctx, id, []CommandState{CommandQueued, CommandSent, CommandDelivered}, to, time.Time{}, nil, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	move("c1", CommandSucceeded)
	move("c3", CommandSent)
	move("c4", CommandDelivered)
	move("c5", CommandExpired)

	idsOf := func(cs []Command) string {
		var s []string
		for _, c := range cs {
			s = append(s, c.ID)
		}
		return strings.Join(s, ",")
	}
	pending := []struct {
		device string
		want   string
	}{
		{"", "c0,c2,c3,c4"},
		{"a", "c0,c3,c4"},
		{"b", "c2"},
		{"nobody", ""},
	}
	for _, tt := range pending {
		cs, err := r.PendingCommands(ctx, tt.device)
		if err != nil {
			t.Fatal(err)
		}
		if got := idsOf(cs); got != tt.want {
			t.Errorf("PendingCommands(%q) = %s, want %s", tt.device, got, tt.want)
		}
	}

	lists := []struct {
		name string
		f    CommandFilter
		want string
	}{
		{"all newest first", CommandFilter{}, "c5,c4,c3,c2,c1,c0"},
		{"device", CommandFilter{Device: "a"}, "c4,c3,c1,c0"},
		{"states", CommandFilter{States: []CommandState{CommandSucceeded, CommandExpired}}, "c5,c1"},
		{"before", CommandFilter{BeforeCreated: t0.Add(2 * time.Second)}, "c2,c1,c0"},
		{"limit", CommandFilter{Limit: 2}, "c5,c4"},
		{"device+state", CommandFilter{Device: "b", States: []CommandState{CommandQueued}}, "c2"},
	}
	for _, tt := range lists {
		t.Run(tt.name, func(t *testing.T) {
			cs, err := r.Commands(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := idsOf(cs); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	if _, err := r.Commands(ctx, CommandFilter{States: []CommandState{"bogus"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bogus state filter = %v", err)
	}
}
