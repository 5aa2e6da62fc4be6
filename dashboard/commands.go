package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/registry"
)

// Commands is what the API needs of the command service
// (*command.Service).
type Commands interface {
	Send(ctx context.Context, req command.SendRequest) (registry.Command, bool, error)
	Get(ctx context.Context, id string) (registry.Command, error)
	History(ctx context.Context, id string) ([]registry.Transition, error)
	List(ctx context.Context, device string, before time.Time, limit int) ([]registry.Command, error)
	Cancel(ctx context.Context, id string) (registry.Command, error)
	Wait(ctx context.Context, id string) (registry.Command, error)
	Twin(ctx context.Context, device string) (command.TwinView, error)
	SetDesired(ctx context.Context, device string, doc json.RawMessage) (registry.TwinDoc, error)
}

// Bounds of the command API.
const (
	maxCommandBody   = command.MaxParamsBytes + 4096
	maxTwinBody      = registry.MaxTwinDocBytes
	defaultWait      = 30 * time.Second
	maxWait          = 5 * time.Minute
	commandPageLimit = 1000
)

// SendCommandRequest is the body of POST /api/v1/devices/{id}/commands.
type SendCommandRequest struct {
	Name   string          `json:"name"`
	Params json.RawMessage `json:"params,omitempty"`
	// Timeout is a Go duration ("30s", "5m"); empty means the default.
	Timeout        string `json:"timeout,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// CommandView is the API form of a command: the ledger entry, whether it
// is final, and (for a single command) its history.
type CommandView struct {
	registry.Command
	Final   bool                  `json:"final"`
	History []registry.Transition `json:"history,omitempty"`
}

func (s *server) commandRoutes() {
	if s.Commands == nil {
		return
	}
	s.api("POST /api/v1/devices/{id}/commands", s.sendCommand)
	s.api("GET /api/v1/devices/{id}/commands", s.listCommands)
	s.api("GET /api/v1/commands/{cmd}", s.getCommand)
	s.api("POST /api/v1/commands/{cmd}/cancel", s.cancelCommand)
	s.api("GET /api/v1/commands/{cmd}/wait", s.waitCommand)
	s.api("GET /api/v1/devices/{id}/twin", s.getTwin)
	s.api("PUT /api/v1/devices/{id}/twin/desired", s.setDesired)
}

// commandError maps a command service error to a response.
func commandError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalid):
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, command.ErrFinal):
		writeError(w, http.StatusConflict, "final", err.Error())
	case errors.Is(err, registry.ErrConflict):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, command.ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "stopping", err.Error())
	default:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// readJSON decodes a bounded JSON body into v.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is larger than %d bytes", limit))
		} else {
			writeError(w, http.StatusBadRequest, "bad_request", "read body: "+err.Error())
		}
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "the body is not valid JSON: "+err.Error())
		return false
	}
	return true
}

func view(c registry.Command) CommandView {
	return CommandView{Command: c, Final: command.Final(c.State)}
}

func (s *server) sendCommand(w http.ResponseWriter, r *http.Request) {
	var req SendCommandRequest
	if !readJSON(w, r, maxCommandBody, &req) {
		return
	}
	var timeout time.Duration
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("timeout: %q is not a positive duration", req.Timeout))
			return
		}
		timeout = d
	}
	c, created, err := s.Commands.Send(r.Context(), command.SendRequest{
		Device: r.PathValue("id"), Name: req.Name, Params: req.Params, Timeout: timeout, IdempotencyKey: req.IdempotencyKey,
	})
	if err != nil {
		commandError(w, err)
		return
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK // the idempotency key matched an existing command
	}
	w.Header().Set("Location", "/api/v1/commands/"+c.ID)
	writeJSON(w, status, view(c))
}

func (s *server) listCommands(w http.ResponseWriter, r *http.Request) {
	id, ok := s.device(w, r)
	if !ok {
		return
	}
	v := r.URL.Query()
	var before time.Time
	if b := v.Get("before"); b != "" {
		t, err := time.Parse(time.RFC3339Nano, b)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "before: not an RFC 3339 time (use created_at of the last command of the previous page)")
			return
		}
		before = t
	}
	limit := 100
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > commandPageLimit {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit: must be 1..%d", commandPageLimit))
			return
		}
		limit = n
	}
	cmds, err := s.Commands.List(r.Context(), id, before, limit)
	if err != nil {
		commandError(w, err)
		return
	}
	out := make([]CommandView, 0, len(cmds))
	for _, c := range cmds {
		out = append(out, view(c))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getCommand(w http.ResponseWriter, r *http.Request) {
	c, err := s.Commands.Get(r.Context(), r.PathValue("cmd"))
	if err != nil {
		commandError(w, err)
		return
	}
	out := view(c)
	if out.History, err = s.Commands.History(r.Context(), c.ID); err != nil {
		commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) cancelCommand(w http.ResponseWriter, r *http.Request) {
	c, err := s.Commands.Cancel(r.Context(), r.PathValue("cmd"))
	if err != nil {
		commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(c))
}

// waitCommand long-polls: it answers when the command is final or when
// ?timeout (default 30s, at most 5m) passes, with the command either way;
// "final" tells which.
func (s *server) waitCommand(w http.ResponseWriter, r *http.Request) {
	timeout := defaultWait
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d < 0 || d > maxWait {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("timeout: must be a duration from 0 to %s", maxWait))
			return
		}
		timeout = d
	}
	id := r.PathValue("cmd")
	if timeout == 0 {
		c, err := s.Commands.Get(r.Context(), id)
		if err != nil {
			commandError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, view(c))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	c, err := s.Commands.Wait(ctx, id)
	switch {
	case err == nil:
	case r.Context().Err() != nil:
		return // the client left
	case errors.Is(err, context.DeadlineExceeded) && c.ID != "":
		// Not final within the timeout: answer with the current state.
	default:
		commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(c))
}

func (s *server) getTwin(w http.ResponseWriter, r *http.Request) {
	tw, err := s.Commands.Twin(r.Context(), r.PathValue("id"))
	if err != nil {
		commandError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, tw)
}

// setDesired replaces the desired document (the body, a JSON object) and
// answers with the new version.
func (s *server) setDesired(w http.ResponseWriter, r *http.Request) {
	var doc json.RawMessage
	if !readJSON(w, r, maxTwinBody, &doc) {
		return
	}
	td, err := s.Commands.SetDesired(r.Context(), r.PathValue("id"), doc)
	if err != nil && td.Version == 0 {
		commandError(w, err)
		return
	}
	if err != nil {
		// Stored, but the broker refused the publish: the device gets it
		// when it next subscribes.
		s.Logger.Warn("desired twin stored but not published", "device", r.PathValue("id"), "error", err)
	}
	writeJSON(w, http.StatusOK, td)
}
