package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The Greeter service of gRPC's helloworld example, without generated
// code: helloworld's HelloRequest{string name = 1} and HelloReply{string
// message = 1} have the same wire encoding as google.protobuf.StringValue
// {string value = 1}, so any helloworld client (or grpcurl with
// helloworld.proto) can call this service and this client can call any
// helloworld server.
const (
	greeterService  = "helloworld.Greeter"
	sayHelloMethod  = "/" + greeterService + "/SayHello"
	callerHeaderKey = "x-demo-caller" // response header: the caller's SPIFFE ID
	serviceHeader   = "x-demo-service"
)

type greeter interface {
	SayHello(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

var greeterDesc = grpc.ServiceDesc{
	ServiceName: greeterService,
	HandlerType: (*greeter)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "SayHello",
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			if intercept == nil {
				return srv.(greeter).SayHello(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: sayHelloMethod}
			return intercept(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(greeter).SayHello(ctx, req.(*wrapperspb.StringValue))
			})
		},
	}},
	Metadata: "helloworld.proto",
}

type greeterServer struct {
	name string
	log  *slog.Logger
}

func (g *greeterServer) SayHello(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var caller string
	if v := md.Get(xfccHeader); len(v) > 0 {
		caller = callerFromXFCC(v[len(v)-1])
	}
	grpc.SetHeader(ctx, metadata.Pairs(callerHeaderKey, caller, serviceHeader, g.name))
	g.log.Info("request", "method", sayHelloMethod, "caller", orNone(caller))
	return wrapperspb.String(fmt.Sprintf("Hello %s, from %s; caller %s", in.GetValue(), g.name, orNone(caller))), nil
}

func serveGRPC(ctx context.Context, listen, name string, log *slog.Logger, ready func(string)) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	// Plaintext: the app listens on loopback and its sidecar terminates
	// mTLS.
	srv := grpc.NewServer()
	srv.RegisterService(&greeterDesc, &greeterServer{name: name, log: log})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(greeterService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	ready(lis.Addr().String())
	return serveUntil(ctx, func() error { return srv.Serve(lis) }, func() {
		hs.Shutdown() // NOT_SERVING first, so health checkers see it go
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(shutdownGrace):
			srv.Stop()
		}
	})
}
