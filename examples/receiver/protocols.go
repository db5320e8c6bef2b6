package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/asyncmesh/asyncmesh/client/callbackpb"
)

// grpcService receives grpc callbacks.
type grpcService struct {
	callbackpb.UnimplementedCallbackServer
	rc *receiver
}

func (g grpcService) Deliver(ctx context.Context, req *callbackpb.DeliverRequest) (*callbackpb.DeliverResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	h := http.Header{}
	for k, v := range md {
		h[http.CanonicalHeaderKey(k)] = v
	}
	if err := g.rc.accept("grpc", h, req.Payload, req.Payload, ""); err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return &callbackpb.DeliverResponse{}, nil
}

func serveGRPC(addr string, rc *receiver) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	callbackpb.RegisterCallbackServer(srv, grpcService{rc: rc})
	go func() {
		if err := srv.Serve(lis); err != nil {
			slog.Error("receiver: grpc", "err", err)
		}
	}()
	return nil
}

// consumeAMQP binds a queue of its own to amq.topic with binding and
// records the callbacks published there.
func consumeAMQP(url, binding string, rc *receiver) error {
	if url == "" {
		return fmt.Errorf("the variable is empty")
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		return fmt.Errorf("dialing the broker: %w", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err == nil {
		err = ch.QueueBind(q.Name, binding, "amq.topic", false, nil)
	}
	if err != nil {
		return fmt.Errorf("declaring the callback queue: %w", err)
	}
	msgs, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		return err
	}
	go func() {
		for m := range msgs {
			h := http.Header{}
			for k, v := range m.Headers {
				if s, ok := v.(string); ok {
					h.Set(k, s)
				}
			}
			if err := rc.accept("amqp", h, m.Body, m.Body, ""); err != nil {
				_ = m.Reject(false)
				continue
			}
			_ = m.Ack(false)
		}
		slog.Warn("receiver: amqp consumer ended")
	}()
	return nil
}
