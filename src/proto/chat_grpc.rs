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
    pub fn spawn<F>(&self, f: F) where F: ::std::future::Future<Output = ()> + Send + 'static {
        self.client.spawn(f)
    }
}

pub trait ChatService {
    fn send_message(&mut self, ctx: ::grpcio::RpcContext, _req: super::chat::Message, sink: ::grpcio::UnarySink<super::chat::Response>) {
        grpcio::unimplemented_call!(ctx, sink)
    }
}

pub fn create_chat_service<S: ChatService + Send + Clone + 'static>(s: S) -> ::grpcio::Service {
    let mut builder = ::grpcio::ServiceBuilder::new();
    let mut instance = s;
    builder = builder.add_unary_handler(&METHOD_CHAT_SERVICE_SEND_MESSAGE, move |ctx, req, resp| {
        instance.send_message(ctx, req, resp)
    });
    builder.build()
}
