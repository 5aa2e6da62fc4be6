package command

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/registry"
)

// TestMeasureRoundTrip measures the command round trip (Send called →
// reply recorded in the ledger) for 1,000 commands to 100 connected paho
// devices that reply at once, in two patterns: a burst (each device's 10
// commands sent back to back, all devices at once) and a closed loop (each
// device has one command outstanding at a time), then 100 commands one
// at a time for the unloaded latency. It prints the figures
// and asserts only that every command succeeded: no timing thresholds.
func TestMeasureRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	const devices, perDevice = 100, 10
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("rtm-%03d", i)
	}
	e := newEnv(t, ids...)
	for _, id := range ids {
		e.connect(id, okReply(`{"done": true}`))
	}

	run := func(name string, closedLoop bool) {
		var (
			mu   sync.Mutex
			rtts []time.Duration
			wg   sync.WaitGroup
		)
		start := time.Now()
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				var sent []registry.Command
				for i := range perDevice {
					c, _, err := e.svc.Send(ctx, SendRequest{Device: id, Name: "ping", Timeout: time.Minute})
					if err != nil {
						t.Errorf("send %s/%d: %v", id, i, err)
						return
					}
					if closedLoop {
						sent = append(sent[:0], c)
						if !waitAll(t, e, sent, &mu, &rtts) {
							return
						}
					} else {
						sent = append(sent, c)
					}
				}
				if !closedLoop {
					waitAll(t, e, sent, &mu, &rtts)
				}
			}()
		}
		wg.Wait()
		wall := time.Since(start)
		if len(rtts) != devices*perDevice {
			t.Fatalf("%s: %d of %d commands succeeded", name, len(rtts), devices*perDevice)
		}
		slices.Sort(rtts)
		q := func(p float64) time.Duration { return rtts[int(p*float64(len(rtts)-1))] }
		t.Logf("%s: %d commands to %d devices in %s (%.0f/s): round trip p50 %s, p90 %s, p99 %s, max %s",
			name, len(rtts), devices, wall.Round(time.Millisecond), float64(len(rtts))/wall.Seconds(),
			q(.50).Round(10*time.Microsecond), q(.90).Round(10*time.Microsecond), q(.99).Round(10*time.Microsecond), rtts[len(rtts)-1].Round(10*time.Microsecond))
	}
	run("burst", false)
	run("closed loop", true)

	// For scale: the unloaded round trip, one command at a time.
	var rtts []time.Duration
	var mu sync.Mutex
	for i := range 100 {
		c, _, err := e.svc.Send(context.Background(), SendRequest{Device: ids[i%devices], Name: "ping", Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if !waitAll(t, e, []registry.Command{c}, &mu, &rtts) {
			return
		}
	}
	slices.Sort(rtts)
	t.Logf("sequential: 100 commands one at a time: round trip p50 %s, p99 %s",
		rtts[49].Round(10*time.Microsecond), rtts[98].Round(10*time.Microsecond))
}

// waitAll waits for commands and records their ledger round trip.
func waitAll(t *testing.T, e *env, cmds []registry.Command, mu *sync.Mutex, rtts *[]time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range cmds {
		f, err := e.svc.Wait(ctx, c.ID)
		if err != nil || f.State != registry.CommandSucceeded {
			t.Errorf("command %s: %s %v", c.ID, f.State, err)
			return false
		}
		mu.Lock()
		*rtts = append(*rtts, f.UpdatedAt.Sub(f.CreatedAt))
		mu.Unlock()
	}
	return true
}
