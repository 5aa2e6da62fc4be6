package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAPITokens(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)

	tokA, secretA, err := r.CreateAPIToken(ctx, "ci")
	if err != nil {
		t.Fatal(err)
	}
	tokB, secretB, err := r.CreateAPIToken(ctx, "grafana")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secretA, "fha_") || len(secretA) != 4+43 || secretA == secretB {
		t.Fatalf("secrets %q, %q", secretA, secretB)
	}
	for _, name := range []string{"", strings.Repeat("n", 65), "tab\there"} {
		if _, _, err := r.CreateAPIToken(ctx, name); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateAPIToken(%q) = %v, want ErrInvalid", name, err)
		}
	}

	tests := []struct {
		name   string
		secret string
		wantID string
	}{
		{"token a", secretA, tokA.ID},
		{"token b", secretB, tokB.ID},
		{"wrong", "fha_" + strings.Repeat("x", 43), ""},
		{"empty", "", ""},
		{"device prefix", "fhd_" + secretA[4:], ""},
		{"truncated", secretA[:20], ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, ok, err := r.AuthenticateAPIToken(ctx, tt.secret)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (tt.wantID != "") || tok.ID != tt.wantID {
				t.Errorf("AuthenticateAPIToken = %+v, %v; want id %q", tok, ok, tt.wantID)
			}
			if ok && tok.LastUsed.IsZero() {
				t.Error("LastUsed not set on use")
			}
		})
	}

	list, err := r.APITokens(ctx)
	if err != nil || len(list) != 2 || list[0].ID != tokA.ID || list[0].Name != "ci" || list[0].LastUsed.IsZero() {
		t.Fatalf("APITokens = %+v, %v", list, err)
	}

	if err := r.DeleteAPIToken(ctx, tokA.ID); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteAPIToken(ctx, tokA.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete = %v, want ErrNotFound", err)
	}
	if _, ok, _ := r.AuthenticateAPIToken(ctx, secretA); ok {
		t.Error("deleted token still authenticates")
	}
	if _, ok, _ := r.AuthenticateAPIToken(ctx, secretB); !ok {
		t.Error("other token stopped working")
	}
}

func TestAPITokenLastUsedThrottled(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }
	_, secret, err := r.CreateAPIToken(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	use := func() time.Time {
		t.Helper()
		tok, ok, err := r.AuthenticateAPIToken(ctx, secret)
		if err != nil || !ok {
			t.Fatalf("authenticate: %v, %v", ok, err)
		}
		return tok.LastUsed
	}
	if got := use(); !got.Equal(now) {
		t.Fatalf("first use: last_used %v, want %v", got, now)
	}
	first := now
	now = now.Add(10 * time.Second)
	if got := use(); !got.Equal(first) {
		t.Errorf("use within a minute rewrote last_used: %v", got)
	}
	now = now.Add(time.Minute)
	if got := use(); !got.Equal(now) {
		t.Errorf("use after a minute: last_used %v, want %v", got, now)
	}
}

func TestEnsureAdminToken(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	path := filepath.Join(t.TempDir(), "secrets", "admin.token")

	created, err := r.EnsureAdminToken(ctx, path)
	if err != nil || !created {
		t.Fatalf("first EnsureAdminToken = %v, %v; want created", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Errorf("token dir mode %v, want 0700", dst.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(b))
	tok, ok, err := r.AuthenticateAPIToken(ctx, secret)
	if err != nil || !ok || tok.Name != "admin" {
		t.Fatalf("admin token does not authenticate: %+v, %v, %v", tok, ok, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}

	// Second call: nothing happens, the file is untouched.
	if err := os.WriteFile(path, []byte("edited by operator\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	created, err = r.EnsureAdminToken(ctx, path)
	if err != nil || created {
		t.Fatalf("second EnsureAdminToken = %v, %v; want no-op", created, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "edited by operator\n" {
		t.Errorf("second call rewrote the file: %q", b)
	}
	if list, _ := r.APITokens(ctx); len(list) != 1 {
		t.Errorf("%d tokens, want 1", len(list))
	}
}

func TestEnsureAdminTokenSkipsWhenTokensExist(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	if _, _, err := r.CreateAPIToken(ctx, "existing"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "admin.token")
	if created, err := r.EnsureAdminToken(ctx, path); err != nil || created {
		t.Fatalf("EnsureAdminToken = %v, %v; want no-op", created, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file written although a token exists: %v", err)
	}
}

func TestEnsureAdminTokenConcurrent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	a, b := openAt(t, path), openAt(t, path)
	tokenPath := filepath.Join(t.TempDir(), "admin.token")
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		creates int
	)
	for _, r := range []*Registry{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			created, err := r.EnsureAdminToken(ctx, tokenPath)
			if err != nil {
				t.Error(err)
			}
			if created {
				mu.Lock()
				creates++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if creates != 1 {
		t.Errorf("%d admin tokens created, want 1", creates)
	}
	secret, _ := os.ReadFile(tokenPath)
	if _, ok, err := b.AuthenticateAPIToken(ctx, strings.TrimSpace(string(secret))); !ok || err != nil {
		t.Errorf("file's token does not authenticate: %v, %v", ok, err)
	}
}

func TestEnsureAdminTokenUnwritablePath(t *testing.T) {
	ctx := context.Background()
	r := openTest(t)
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The parent "directory" is a file: writing fails, and the insert
	// must be rolled back so a later call with a good path creates one.
	if _, err := r.EnsureAdminToken(ctx, filepath.Join(blocker, "admin.token")); err == nil {
		t.Fatal("EnsureAdminToken succeeded with an unwritable path")
	}
	if list, _ := r.APITokens(ctx); len(list) != 0 {
		t.Fatalf("token left in registry after failed write: %+v", list)
	}
	if created, err := r.EnsureAdminToken(ctx, filepath.Join(t.TempDir(), "admin.token")); err != nil || !created {
		t.Fatalf("retry = %v, %v", created, err)
	}
}
