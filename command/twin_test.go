package command

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestTwin: desired state set while the device is offline reaches it when
// it connects (retained); its report updates reported and empties the
// delta; after a broker restart (retained messages gone) the desired state
// is published again when the device subscribes.
func TestTwin(t *testing.T) {
	e := newEnv(t, "tw-1")
	ctx := context.Background()
	td, err := e.svc.SetDesired(ctx, "tw-1", json.RawMessage(`{"interval": 30, "mode": "eco", "limits": {"max": 80}}`))
	if err != nil || td.Version != 1 {
		t.Fatalf("set desired: %v version %d", err, td.Version)
	}
	tw, err := e.svc.Twin(ctx, "tw-1")
	if err != nil || len(tw.Delta) != 3 || tw.Reported.Version != 0 {
		t.Fatalf("twin before any report: %+v (%v)", tw, err)
	}

	d := e.connect("tw-1", nil)
	got := nextDesired(t, d)
	if got.Version != 1 || !jsonEqual(got.Desired, td.Doc) {
		t.Fatalf("device got desired %+v", got)
	}

	// The report, partly matching: the delta holds what differs.
	waitToken(t, d.c.Publish(telemetry.TwinReportedTopic("tw-1"), 1, false,
		`{"version": 1, "reported": {"interval": 30.0, "mode": "normal", "limits": {"max": 80}, "uptime": 12}}`), "report")
	tw, _ = e.svc.Twin(ctx, "tw-1")
	if tw.Reported.Version != 1 || len(tw.Delta) != 1 || string(tw.Delta["mode"]) != `"eco"` {
		t.Fatalf("after a partial report: reported v%d delta %v", tw.Reported.Version, tw.Delta)
	}
	// A bare object is a report too.
	waitToken(t, d.c.Publish(telemetry.TwinReportedTopic("tw-1"), 1, false,
		`{"interval": 30, "mode": "eco", "limits": {"max": 80}}`), "report")
	tw, _ = e.svc.Twin(ctx, "tw-1")
	if tw.Reported.Version != 2 || len(tw.Delta) != 0 || tw.Reported.UpdatedAt.IsZero() {
		t.Fatalf("after the full report: reported v%d delta %v", tw.Reported.Version, tw.Delta)
	}

	// A new desired version reaches the connected device right away.
	if _, err := e.svc.SetDesired(ctx, "tw-1", json.RawMessage(`{"interval": 60, "mode": "eco", "limits": {"max": 80}}`)); err != nil {
		t.Fatal(err)
	}
	if got := nextDesired(t, d); got.Version != 2 {
		t.Fatalf("got desired v%d, want 2", got.Version)
	}

	// An invalid report is rejected and counted; the twin keeps its state.
	waitToken(t, d.c.Publish(telemetry.TwinReportedTopic("tw-1"), 1, false, `[1, 2]`), "bad report")
	testkit.Eventually(t, waitFor, func() bool {
		return testutil.ToFloat64(e.svc.m.twinRejected.WithLabelValues("malformed")) == 1
	}, "the bad report to be counted")
	if tw, _ := e.svc.Twin(ctx, "tw-1"); tw.Reported.Version != 2 {
		t.Fatalf("a bad report changed reported to v%d", tw.Reported.Version)
	}
	if err := e.svc.HandleReported(ctx, Incoming{Device: "other", Topic: telemetry.TwinReportedTopic("tw-1"), Payload: []byte(`{}`)}); !errors.Is(err, ErrRejected) {
		t.Fatalf("foreign report: %v", err)
	}
	d.c.Disconnect(50)

	// Restart: the broker's retained store is empty, the ledger is not.
	e.stop()
	e.start()
	d = e.connect("tw-1", nil)
	if got := nextDesired(t, d); got.Version != 2 || !jsonEqual(got.Desired, json.RawMessage(`{"interval": 60, "mode": "eco", "limits": {"max": 80}}`)) {
		t.Fatalf("after restart the device got %+v", got)
	}

	if _, err := e.svc.SetDesired(ctx, "ghost", json.RawMessage(`{}`)); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := e.svc.SetDesired(ctx, "tw-1", json.RawMessage(`[1]`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("array document: %v", err)
	}
}

func nextDesired(t *testing.T, d *device) DesiredMessage {
	t.Helper()
	select {
	case m := <-d.desired:
		return m
	case <-time.After(waitFor):
		t.Fatalf("%s: no desired twin within %s", d.id, waitFor)
	}
	return DesiredMessage{}
}
