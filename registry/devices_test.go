package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCreateDevice(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "taken", nil)

	long := strings.Repeat("x", 129)
	manyLabels := map[string]string{}
	for i := 0; i <= MaxLabels; i++ {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name    string
		spec    DeviceSpec
		wantErr error
	}{
		{"plain", DeviceSpec{ID: "dev-1"}, nil},
		{"all id chars, type and labels", DeviceSpec{ID: "Site_A:pump-01.v2", Type: "pump.v2", Labels: map[string]string{"site": "Zürich Nord", "app.example.com/role": "primary", "empty": ""}}, nil},
		{"duplicate", DeviceSpec{ID: "taken"}, ErrExists},
		{"empty id", DeviceSpec{ID: ""}, ErrInvalid},
		{"slash in id", DeviceSpec{ID: "a/b"}, ErrInvalid},
		{"wildcard +", DeviceSpec{ID: "a+"}, ErrInvalid},
		{"wildcard #", DeviceSpec{ID: "#"}, ErrInvalid},
		{"$SYS", DeviceSpec{ID: "$SYS"}, ErrInvalid},
		{"leading dot", DeviceSpec{ID: ".hidden"}, ErrInvalid},
		{"NUL", DeviceSpec{ID: "a\x00b"}, ErrInvalid},
		{"too long", DeviceSpec{ID: long}, ErrInvalid},
		{"bad type", DeviceSpec{ID: "t1", Type: "has space"}, ErrInvalid},
		{"empty label key", DeviceSpec{ID: "l1", Labels: map[string]string{"": "v"}}, ErrInvalid},
		{"label key starts with digit", DeviceSpec{ID: "l2", Labels: map[string]string{"1k": "v"}}, ErrInvalid},
		{"label key with =", DeviceSpec{ID: "l3", Labels: map[string]string{"a=b": "v"}}, ErrInvalid},
		{"label value control char", DeviceSpec{ID: "l4", Labels: map[string]string{"k": "a\nb"}}, ErrInvalid},
		{"label value invalid utf8", DeviceSpec{ID: "l5", Labels: map[string]string{"k": "\xff"}}, ErrInvalid},
		{"label value too long", DeviceSpec{ID: "l6", Labels: map[string]string{"k": strings.Repeat("v", MaxLabelValueLen+1)}}, ErrInvalid},
		{"too many labels", DeviceSpec{ID: "l7", Labels: manyLabels}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			d, tok, err := r.CreateDevice(ctx, tt.spec)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("CreateDevice = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == ErrInvalid {
					if _, err := r.Device(ctx, tt.spec.ID); !errors.Is(err, ErrNotFound) {
						t.Errorf("refused device was stored: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateDevice: %v", err)
			}
			if !strings.HasPrefix(tok, "fhd_") || len(tok) != 4+43 {
				t.Errorf("token %q: want fhd_ + 43 base64url chars", tok)
			}
			if d.ID != tt.spec.ID || d.Type != tt.spec.Type || !maps.Equal(d.Labels, tt.spec.Labels) || d.Online || !d.LastSeen.IsZero() {
				t.Errorf("returned %+v for %+v", d, tt.spec)
			}
			if d.CreatedAt.Before(before.Add(-time.Second)) || d.CreatedAt.After(time.Now().Add(time.Second)) {
				t.Errorf("CreatedAt %v not now", d.CreatedAt)
			}
			got, err := r.Device(ctx, tt.spec.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != d.ID || got.Type != d.Type || !maps.Equal(got.Labels, d.Labels) || !got.CreatedAt.Equal(d.CreatedAt) {
				t.Errorf("Device() = %+v, CreateDevice returned %+v", got, d)
			}
			if got.Labels == nil {
				t.Error("Labels is nil, want empty map")
			}
		})
	}
}

func TestDevicesFilterAndPaging(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	// 30 devices: dev-00..dev-29; type by parity; site by i%3; online i%5==0.
	for i := 0; i < 30; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		typ := "even"
		if i%2 == 1 {
			typ = "odd"
		}
		if _, _, err := r.CreateDevice(ctx, DeviceSpec{ID: id, Type: typ, Labels: map[string]string{"site": fmt.Sprint("s", i%3), "fleet": "f"}}); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			if err := r.SetPresence(ctx, id, true, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustCreate(t, r, "Other-Thing", nil)

	yes, no := true, false
	ids := func(from, to, step int) []string {
		var s []string
		for i := from; i < to; i += step {
			s = append(s, fmt.Sprintf("dev-%02d", i))
		}
		return s
	}
	tests := []struct {
		name string
		f    DeviceFilter
		want []string
	}{
		{"first page", DeviceFilter{Limit: 5}, append([]string{"Other-Thing"}, ids(0, 4, 1)...)},
		{"after cursor", DeviceFilter{After: "dev-03", Limit: 3}, ids(4, 7, 1)},
		{"last page short", DeviceFilter{After: "dev-27"}, ids(28, 30, 1)},
		{"past the end", DeviceFilter{After: "zzz"}, nil},
		{"type", DeviceFilter{Type: "odd", Limit: 4}, ids(1, 9, 2)},
		{"label", DeviceFilter{Labels: map[string]string{"site": "s1"}}, ids(1, 30, 3)},
		{"two labels", DeviceFilter{Labels: map[string]string{"site": "s2", "fleet": "f"}, After: "dev-10"}, ids(11, 30, 3)},
		{"label no match", DeviceFilter{Labels: map[string]string{"site": "nowhere"}}, nil},
		{"online", DeviceFilter{Online: &yes}, ids(0, 30, 5)},
		{"offline with type", DeviceFilter{Online: &no, Type: "even", Limit: 3}, []string{"dev-02", "dev-04", "dev-06"}},
		{"search case-insensitive", DeviceFilter{Search: "THING"}, []string{"Other-Thing"}},
		{"search substring", DeviceFilter{Search: "-2"}, ids(20, 30, 1)},
		{"all combined", DeviceFilter{Type: "even", Labels: map[string]string{"site": "s0"}, Online: &yes, Search: "dev"}, []string{"dev-00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, err := r.Devices(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range devs {
				got = append(got, d.ID)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v\nwant %v", got, tt.want)
			}
		})
	}

	// Walking all pages with the cursor visits every device once, in order.
	var all []string
	after := ""
	for {
		page, err := r.Devices(ctx, DeviceFilter{After: after, Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			all = append(all, d.ID)
		}
		after = page[len(page)-1].ID
	}
	if len(all) != 31 {
		t.Errorf("paging visited %d devices, want 31", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1] >= all[i] {
			t.Fatalf("not ordered by id: %q before %q", all[i-1], all[i])
		}
	}

	// Labels come back with each device of a page.
	devs, err := r.Devices(ctx, DeviceFilter{After: "dev-04", Limit: 1})
	if err != nil || len(devs) != 1 || devs[0].Labels["site"] != "s2" || devs[0].Labels["fleet"] != "f" || !devs[0].Online {
		t.Errorf("dev-05 = %+v, %v", devs, err)
	}

	if _, err := r.Devices(ctx, DeviceFilter{Labels: map[string]string{"bad key": "x"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad label key in filter: %v, want ErrInvalid", err)
	}

	total, online, err := r.CountDevices(ctx)
	if err != nil || total != 31 || online != 6 {
		t.Errorf("CountDevices = %d, %d, %v; want 31, 6", total, online, err)
	}
}

func TestDevicesLimit(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	for i := 0; i < 1005; i++ {
		if _, _, err := r.CreateDevice(ctx, DeviceSpec{ID: fmt.Sprintf("d%04d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct{ limit, want int }{{0, 100}, {-1, 100}, {10, 10}, {5000, 1000}} {
		devs, err := r.Devices(ctx, DeviceFilter{Limit: tt.limit})
		if err != nil || len(devs) != tt.want {
			t.Errorf("Limit %d: %d devices, %v; want %d", tt.limit, len(devs), err, tt.want)
		}
	}
}

func TestDeleteDevice(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	tok := mustCreate(t, r, "doomed", map[string]string{"a": "b"})
	mustCreate(t, r, "survivor", nil)
	if _, err := r.SetDesired(ctx, "doomed", []byte(`{"x":1}`), time.Time{}); err != nil {
		t.Fatal(err)
	}
	pending, _, err := r.InsertCommand(ctx, Command{Device: "doomed", Name: "reboot"})
	if err != nil {
		t.Fatal(err)
	}
	done, _, err := r.InsertCommand(ctx, Command{Device: "doomed", Name: "ping"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TransitionCommand(ctx, done.ID, []CommandState{CommandQueued}, CommandSucceeded, time.Time{}, nil, "", ""); err != nil {
		t.Fatal(err)
	}

	if err := r.DeleteDevice(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteDevice(ctx, "doomed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete = %v, want ErrNotFound", err)
	}
	if _, err := r.Device(ctx, "doomed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Device after delete = %v, want ErrNotFound", err)
	}
	if ok, err := r.AuthenticateDevice(ctx, "doomed", tok); ok || err != nil {
		t.Errorf("deleted device authenticates: %v, %v", ok, err)
	}
	if _, err := r.Twin(ctx, "doomed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("twin after delete = %v, want ErrNotFound", err)
	}
	// Labels, credentials and twin rows are gone (cascade).
	for table, col := range map[string]string{"device_labels": "device_id", "device_credentials": "device_id", "twins": "device"} {
		var n int
		if err := r.db.QueryRow("SELECT count(*) FROM " + table + " WHERE " + col + " = 'doomed'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d rows left in %s", n, table)
		}
	}
	// Commands stay as history; the pending one was cancelled.
	c, err := r.Command(ctx, pending.ID)
	if err != nil || c.State != CommandCancelled || c.Error != "device deleted" {
		t.Errorf("pending command after delete = %+v, %v; want cancelled", c, err)
	}
	if c, err := r.Command(ctx, done.ID); err != nil || c.State != CommandSucceeded {
		t.Errorf("finished command after delete = %+v, %v; want unchanged", c, err)
	}
	hist, err := r.CommandHistory(ctx, pending.ID)
	if err != nil || len(hist) != 2 || hist[1].To != CommandCancelled || hist[1].Detail != "device deleted" {
		t.Errorf("history = %+v, %v", hist, err)
	}
	if p, err := r.PendingCommands(ctx, ""); err != nil || len(p) != 0 {
		t.Errorf("pending after delete = %+v, %v", p, err)
	}

	// The id can be reused and gets a fresh, empty device.
	mustCreate(t, r, "doomed", nil)
	if d, err := r.Device(ctx, "doomed"); err != nil || len(d.Labels) != 0 {
		t.Errorf("re-created device = %+v, %v", d, err)
	}
	if _, err := r.Device(ctx, "survivor"); err != nil {
		t.Errorf("other device affected: %v", err)
	}
}

func TestAuthenticateDevice(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	tokA := mustCreate(t, r, "dev-a", nil)
	tokB := mustCreate(t, r, "dev-b", nil)

	tests := []struct {
		name  string
		id    string
		token string
		want  bool
	}{
		{"right token", "dev-a", tokA, true},
		{"other right token", "dev-b", tokB, true},
		{"wrong token", "dev-a", "fhd_" + strings.Repeat("A", 43), false},
		{"other device's token", "dev-a", tokB, false},
		{"empty token", "dev-a", "", false},
		{"token with extra byte", "dev-a", tokA + "x", false},
		{"token truncated", "dev-a", tokA[:len(tokA)-1], false},
		{"unknown device", "dev-zzz", tokA, false},
		{"invalid id", "dev-a/#", tokA, false},
		{"empty id", "", tokA, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := r.AuthenticateDevice(ctx, tt.id, tt.token)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.want {
				t.Errorf("AuthenticateDevice(%q) = %v, want %v", tt.id, ok, tt.want)
			}
		})
	}
}

func TestRotateDeviceToken(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	old := mustCreate(t, r, "dev-r", nil)
	other := mustCreate(t, r, "dev-o", nil)

	fresh, err := r.RotateDeviceToken(ctx, "dev-r")
	if err != nil {
		t.Fatal(err)
	}
	if fresh == old {
		t.Fatal("rotation returned the old token")
	}
	for _, tt := range []struct {
		id, tok string
		want    bool
	}{{"dev-r", old, false}, {"dev-r", fresh, true}, {"dev-o", other, true}} {
		if ok, err := r.AuthenticateDevice(ctx, tt.id, tt.tok); err != nil || ok != tt.want {
			t.Errorf("AuthenticateDevice(%s) = %v, %v; want %v", tt.id, ok, err, tt.want)
		}
	}
	if _, err := r.RotateDeviceToken(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rotate unknown = %v, want ErrNotFound", err)
	}
}

func TestPresence(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	for _, id := range []string{"p1", "p2", "p3"} {
		mustCreate(t, r, id, nil)
	}
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC)

	if err := r.SetPresence(ctx, "p1", true, t0); err != nil {
		t.Fatal(err)
	}
	if err := r.SetPresence(ctx, "p2", true, t0); err != nil {
		t.Fatal(err)
	}
	if err := r.SetPresence(ctx, "nobody", true, t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetPresence(unknown) = %v, want ErrNotFound", err)
	}
	// Batch touch: moves forward only, skips unknown ids.
	err := r.TouchLastSeen(ctx, map[string]time.Time{
		"p1":      t0.Add(time.Minute),
		"p2":      t0.Add(-time.Hour), // older than what is stored: ignored
		"p3":      t0.Add(2 * time.Minute),
		"deleted": t0,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetPresence(ctx, "p2", false, t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		id       string
		online   bool
		lastSeen time.Time
	}{
		{"p1", true, t0.Add(time.Minute)},
		{"p2", false, t0.Add(3 * time.Minute)},
		{"p3", false, t0.Add(2 * time.Minute)},
	}
	for _, tt := range tests {
		d, err := r.Device(ctx, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Online != tt.online || !d.LastSeen.Equal(tt.lastSeen) {
			t.Errorf("%s: online %v last_seen %v; want %v %v", tt.id, d.Online, d.LastSeen, tt.online, tt.lastSeen)
		}
	}
	if _, online, _ := r.CountDevices(ctx); online != 1 {
		t.Errorf("online = %d, want 1", online)
	}
	if err := r.ResetPresence(ctx); err != nil {
		t.Fatal(err)
	}
	if _, online, _ := r.CountDevices(ctx); online != 0 {
		t.Errorf("online after reset = %d, want 0", online)
	}
	if d, _ := r.Device(ctx, "p1"); !d.LastSeen.Equal(t0.Add(time.Minute)) {
		t.Errorf("reset changed last_seen: %v", d.LastSeen)
	}
}

func TestSetLabels(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	mustCreate(t, r, "lbl", map[string]string{"a": "1", "b": "2"})
	if err := r.SetLabels(ctx, "lbl", map[string]string{"b": "3", "c": "4"}); err != nil {
		t.Fatal(err)
	}
	d, err := r.Device(ctx, "lbl")
	if err != nil || !maps.Equal(d.Labels, map[string]string{"b": "3", "c": "4"}) {
		t.Errorf("labels = %v, %v", d.Labels, err)
	}
	if err := r.SetLabels(ctx, "nobody", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetLabels(unknown) = %v", err)
	}
	if err := r.SetLabels(ctx, "lbl", map[string]string{"": "x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetLabels(bad) = %v", err)
	}
}

// TestDevicesQueryPlans guards the listing's speed without timing: every
// filter shape must be answered from an index in id order, so SQLite never
// sorts (no TEMP B-TREE) and can stop after one page.
func TestDevicesQueryPlans(t *testing.T) {
	r := openTest(t)
	yes := true
	two := map[string]string{"site": "a", "fleet": "b"}
	tests := []struct {
		name  string
		f     DeviceFilter
		drive string
	}{
		{"none", DeviceFilter{}, ""},
		{"cursor", DeviceFilter{After: "x"}, ""},
		{"type", DeviceFilter{Type: "t"}, ""},
		{"online", DeviceFilter{Online: &yes}, ""},
		{"search", DeviceFilter{Search: "x"}, ""},
		{"label", DeviceFilter{Labels: map[string]string{"site": "a"}}, "site"},
		{"two labels", DeviceFilter{Labels: two, Type: "t", Online: &yes}, "fleet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := slices.Sorted(maps.Keys(tt.f.Labels))
			q, args := devicesQuery(tt.f, keys, tt.drive)
			rows, err := r.db.Query("EXPLAIN QUERY PLAN "+q, args...)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, detail)
			}
			joined := strings.Join(plan, "\n")
			if strings.Contains(joined, "TEMP B-TREE") {
				t.Errorf("plan sorts:\n%s", joined)
			}
			if tt.drive != "" && !strings.Contains(plan[0], "device_labels_kv") {
				t.Errorf("plan not driven by the label index:\n%s", joined)
			}
		})
	}
}
