// This file is generated. Do not edit
// @generated

// https://github.com/Manishearth/rust-clippy/issues/702
#![allow(unknown_lints)]
#![allow(clippy::all)]

#![allow(box_pointers)]
#![allow(dead_code)]
#![allow(missing_docs)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]
#![allow(trivial_casts)]
#![allow(unsafe_code)]
#![allow(unused_imports)]
#![allow(unused_results)]

const METHOD_CHAT_SERVICE_SEND_MESSAGE: ::grpcio::Method<super::chat::Message, super::chat::Response> = ::grpcio::Method {
    ty: ::grpcio::MethodType::Unary,
    name: "/chat.ChatService/SendMessage",
    req_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
    resp_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
};

const METHOD_CHAT_SERVICE_CHAT: ::grpcio::Method<super::chat::Message, super::chat::Message> = ::grpcio::Method {
    ty: ::grpcio::MethodType::Duplex,
    name: "/chat.ChatService/Chat",
    req_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
    resp_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
};

const METHOD_CHAT_SERVICE_SUBSCRIBE: ::grpcio::Method<super::chat::SubscribeRequest, super::chat::Message> = ::grpcio::Method {
    ty: ::grpcio::MethodType::ServerStreaming,
    name: "/chat.ChatService/Subscribe",
    req_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
    resp_mar: ::grpcio::Marshaller { ser: ::grpcio::pb_ser, de: ::grpcio::pb_de },
};

#[derive(Clone)]
pub struct ChatServiceClient {
    pub client: ::grpcio::Client,
}

impl ChatServiceClient {
    pub fn new(channel: ::grpcio::Channel) -> Self {
        ChatServiceClient {
            client: ::grpcio::Client::new(channel),
        }
    }

    pub fn send_message_opt(&self, req: &super::chat::Message, opt: ::grpcio::CallOption) -> ::grpcio::Result<super::chat::Response> {
        self.client.unary_call(&METHOD_CHAT_SERVICE_SEND_MESSAGE, req, opt)
    }

    pub fn send_message(&self, req: &super::chat::Message) -> ::grpcio::Result<super::chat::Response> {
        self.send_message_opt(req, ::grpcio::CallOption::default())
    }

    pub fn send_message_async_opt(&self, req: &super::chat::Message, opt: ::grpcio::CallOption) -> ::grpcio::Result<::grpcio::ClientUnaryReceiver<super::chat::Response>> {
        self.client.unary_call_async(&METHOD_CHAT_SERVICE_SEND_MESSAGE, req, opt)
    }

    pub fn send_message_async(&self, req: &super::chat::Message) -> ::grpcio::Result<::grpcio::ClientUnaryReceiver<super::chat::Response>> {
        self.send_message_async_opt(req, ::grpcio::CallOption::default())
    }

    pub fn chat_opt(&self, opt: ::grpcio::CallOption) -> ::grpcio::Result<(::grpcio::ClientDuplexSender<super::chat::Message>, ::grpcio::ClientDuplexReceiver<super::chat::Message>)> {
        self.client.duplex_streaming(&METHOD_CHAT_SERVICE_CHAT, opt)
    }

    pub fn chat(&self) -> ::grpcio::Result<(::grpcio::ClientDuplexSender<super::chat::Message>, ::grpcio::ClientDuplexReceiver<super::chat::Message>)> {
        self.chat_opt(::grpcio::CallOption::default())
    }

    pub fn subscribe_opt(&self, req: &super::chat::SubscribeRequest, opt: ::grpcio::CallOption) -> ::grpcio::Result<::grpcio::ClientSStreamReceiver<super::chat::Message>> {
        self.client.server_streaming(&METHOD_CHAT_SERVICE_SUBSCRIBE, req, opt)
    }

    pub fn subscribe(&self, req: &super::chat::SubscribeRequest) -> ::grpcio::Result<::grpcio::ClientSStreamReceiver<super::chat::Message>> {
        self.subscribe_opt(req, ::grpcio::CallOption::default())
    }
    pub fn spawn<F>(&self, f: F) where F: ::std::future::Future<Output = ()> + Send + 'static {
        self.client.spawn(f)
    }
}

pub trait ChatService {
    fn send_message(&mut self, ctx: ::grpcio::RpcContext, _req: super::chat::Message, sink: ::grpcio::UnarySink<super::chat::Response>) {
        grpcio::unimplemented_call!(ctx, sink)
    }
    fn chat(&mut self, ctx: ::grpcio::RpcContext, _stream: ::grpcio::RequestStream<super::chat::Message>, sink: ::grpcio::DuplexSink<super::chat::Message>) {
        grpcio::unimplemented_call!(ctx, sink)
    }
    fn subscribe(&mut self, ctx: ::grpcio::RpcContext, _req: super::chat::SubscribeRequest, sink: ::grpcio::ServerStreamingSink<super::chat::Message>) {
        grpcio::unimplemented_call!(ctx, sink)
    }
}

pub fn create_chat_service<S: ChatService + Send + Clone + 'static>(s: S) -> ::grpcio::Service {
    let mut builder = ::grpcio::ServiceBuilder::new();
    let mut instance = s.clone();
    builder = builder.add_unary_handler(&METHOD_CHAT_SERVICE_SEND_MESSAGE, move |ctx, req, resp| {
        instance.send_message(ctx, req, resp)
    });
    let mut instance = s.clone();
    builder = builder.add_duplex_streaming_handler(&METHOD_CHAT_SERVICE_CHAT, move |ctx, req, resp| {
        instance.chat(ctx, req, resp)
    });
    let mut instance = s;
    builder = builder.add_server_streaming_handler(&METHOD_CHAT_SERVICE_SUBSCRIBE, move |ctx, req, resp| {
        instance.subscribe(ctx, req, resp)
    });
    builder.build()
}
