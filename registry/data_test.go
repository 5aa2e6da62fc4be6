package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	binary := []byte{0x00, 0xff, 0xfe, '{'}
	batch := []DeadLetter{
		{Device: "d1", Topic: "devices/d1/telemetry", Payload: []byte(`{"ts":`), Reason: "bad_json", Detail: "unexpected end of JSON input", ReceivedAt: t0},
		{Device: "d2", Topic: "devices/d2/telemetry", Payload: binary, Reason: "bad_json", Detail: "invalid character", ReceivedAt: t0.Add(time.Second)},
		{Device: "d1", Topic: "devices/d1/telemetry", Payload: []byte(`{"metrics":{}}`), Reason: "no_metrics", Detail: "no metrics", ReceivedAt: t0.Add(2 * time.Second)},
		{Device: "", Topic: "garbage", Payload: nil, Reason: "bad_topic"}, // zero time: now
	}
	if err := r.AddDeadLetters(ctx, batch); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(batch); i++ {
		if batch[i].ID <= batch[i-1].ID {
			t.Fatalf("IDs not set increasing: %d, %d", batch[i-1].ID, batch[i].ID)
		}
	}
	if batch[3].ReceivedAt.IsZero() {
		t.Error("zero ReceivedAt not filled in")
	}
	if err := r.AddDeadLetters(ctx, []DeadLetter{{Device: "d1"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("dead letter without reason = %v, want ErrInvalid", err)
	}

	got, err := r.DeadLetter(ctx, batch[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Payload, binary) || got.Reason != "bad_json" || got.Topic != batch[1].Topic || !got.ReceivedAt.Equal(batch[1].ReceivedAt) || !got.ReplayedAt.IsZero() {
		t.Errorf("DeadLetter = %+v", got)
	}
	if _, err := r.DeadLetter(ctx, 9999); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeadLetter(9999) = %v", err)
	}

	// d1's bad_json replayed successfully, d2's replay failed again.
	if err := r.MarkReplayed(ctx, batch[0].ID, t0.Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if err := r.MarkReplayed(ctx, batch[1].ID, t0.Add(time.Hour), "still invalid"); err != nil {
		t.Fatal(err)
	}
	if err := r.MarkReplayed(ctx, 9999, t0, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkReplayed(9999) = %v", err)
	}

	ids := func(idx ...int) []int64 {
		var s []int64
		for _, i := range idx {
			s = append(s, batch[i].ID)
		}
		return s
	}
	tests := []struct {
		name string
		f    DeadLetterFilter
		want []int64
	}{
		{"default hides successfully replayed", DeadLetterFilter{}, ids(1, 2, 3)},
		{"include replayed", DeadLetterFilter{IncludeReplayed: true}, ids(0, 1, 2, 3)},
		{"by device", DeadLetterFilter{Device: "d1", IncludeReplayed: true}, ids(0, 2)},
		{"by reason", DeadLetterFilter{Reason: "bad_json"}, ids(1)},
		{"paging", DeadLetterFilter{AfterID: batch[1].ID, Limit: 1}, ids(2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dls, err := r.DeadLetters(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, d := range dls {
				got = append(got, d.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	replayed, _ := r.DeadLetter(ctx, batch[0].ID)
	if !replayed.Replayed() || !replayed.ReplayedAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("replayed = %+v", replayed)
	}
	failed, _ := r.DeadLetter(ctx, batch[1].ID)
	if failed.Replayed() || failed.ReplayError != "still invalid" {
		t.Errorf("failed replay = %+v", failed)
	}

	n, err := r.DeleteDeadLettersBefore(ctx, t0.Add(1500*time.Millisecond))
	if err != nil || n != 2 {
		t.Errorf("DeleteDeadLettersBefore = %d, %v; want 2", n, err)
	}
}

func TestEvents(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	evs := []telemetry.Event{
		{Device: "d1", Metric: "mode", TS: 1000, Value: "eco"},
		{Device: "d1", Metric: "state", TS: 1000, Value: "idle"},
		{Device: "d1", Metric: "mode", TS: 2000, Value: "boost"},
		{Device: "d2", Metric: "mode", TS: 1500, Value: "off"},
		{Device: "d1", Metric: "mode", TS: 3000, Value: "eco"},
	}
	if err := r.AddEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	// Redelivery: the same (device, metric, ts) is stored once, first value wins.
	dup := []telemetry.Event{evs[0], {Device: "d1", Metric: "mode", TS: 2000, Value: "changed"}, evs[2]}
	if err := r.AddEvents(ctx, dup); err != nil {
		t.Fatal(err)
	}
	if err := r.AddEvents(ctx, []telemetry.Event{{Device: "d1", TS: 1}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("event without metric = %v, want ErrInvalid", err)
	}

	str := func(es []telemetry.Event) string {
		var b bytes.Buffer
		for _, e := range es {
			fmt.Fprintf(&b, "%s/%s@%d=%s ", e.Device, e.Metric, e.TS, e.Value)
		}
		return b.String()
	}
	tests := []struct {
		name     string
		device   string
		from, to int64
		limit    int
		want     string
	}{
		{"all of d1 in order", "d1", 0, 10000, 0, "d1/mode@1000=eco d1/state@1000=idle d1/mode@2000=boost d1/mode@3000=eco "},
		{"inclusive bounds", "d1", 2000, 3000, 0, "d1/mode@2000=boost d1/mode@3000=eco "},
		{"limit", "d1", 0, 10000, 2, "d1/mode@1000=eco d1/state@1000=idle "},
		{"other device", "d2", 0, 10000, 0, "d2/mode@1500=off "},
		{"empty range", "d1", 1001, 1999, 0, ""},
		{"unknown device", "zz", 0, 10000, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Events(ctx, tt.device, tt.from, tt.to, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if str(got) != tt.want {
				t.Errorf("got  %s\nwant %s", str(got), tt.want)
			}
		})
	}
	n, err := r.DeleteEventsBefore(ctx, 2000)
	if err != nil || n != 3 {
		t.Errorf("DeleteEventsBefore = %d, %v; want 3", n, err)
	}
}

func TestTwin(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "tw", nil)
	t0 := time.Date(2025, 4, 1, 0, 0, 0, 0, time.UTC)

	tw, err := r.Twin(ctx, "tw")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Desired.Doc) != "{}" || tw.Desired.Version != 0 || string(tw.Reported.Doc) != "{}" || tw.Reported.Version != 0 || !tw.Desired.UpdatedAt.IsZero() {
		t.Errorf("fresh twin = %+v", tw)
	}

	steps := []struct {
		side    string
		doc     string
		wantVer int64
		wantErr error
	}{
		{"desired", `{"interval": 10}`, 1, nil},
		{"desired", `{"interval": 20}`, 2, nil},
		{"reported", `{"interval": 10, "fw": "1.2"}`, 1, nil},
		{"desired", `{"interval": 30}`, 3, nil},
		{"desired", `[1,2]`, 0, ErrInvalid},
		{"desired", `{"broken"`, 0, ErrInvalid},
		{"reported", ``, 0, ErrInvalid},
		{"reported", `"str"`, 0, ErrInvalid},
		{"reported", `{"interval": 30}`, 2, nil},
	}
	for i, s := range steps {
		at := t0.Add(time.Duration(i) * time.Second)
		var (
			td  TwinDoc
			err error
		)
		if s.side == "desired" {
			td, err = r.SetDesired(ctx, "tw", json.RawMessage(s.doc), at)
		} else {
			td, err = r.SetReported(ctx, "tw", json.RawMessage(s.doc), at)
		}
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Errorf("step %d: %v, want %v", i, err, s.wantErr)
			}
			continue
		}
		if err != nil || td.Version != s.wantVer || string(td.Doc) != s.doc || !td.UpdatedAt.Equal(at) {
			t.Errorf("step %d: %+v, %v; want version %d", i, td, err, s.wantVer)
		}
	}
	tw, err = r.Twin(ctx, "tw")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Desired.Doc) != `{"interval": 30}` || tw.Desired.Version != 3 || !tw.Desired.UpdatedAt.Equal(t0.Add(3*time.Second)) ||
		string(tw.Reported.Doc) != `{"interval": 30}` || tw.Reported.Version != 2 {
		t.Errorf("twin = %+v", tw)
	}

	if _, err := r.SetDesired(ctx, "nobody", json.RawMessage(`{}`), t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetDesired(unknown) = %v", err)
	}
	if _, err := r.Twin(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Twin(unknown) = %v", err)
	}
	big := append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), MaxTwinDocBytes)...)
	big = append(big, `"}`...)
	if _, err := r.SetReported(ctx, "tw", big, t0); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversized doc = %v", err)
	}
}
