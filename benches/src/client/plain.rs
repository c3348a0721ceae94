//! Plain WebSocket: ready once upgraded, every data frame is a message (the Node `ws` peer).

use super::End;
use super::codec::{Codec, Event, Hello};

/// A client of a server without a protocol of its own.
#[derive(Debug, Default)]
pub struct Plain;

impl Codec for Plain {
    fn path(&self, _: &Hello<'_>) -> String {
        "/".into()
    }

    fn opened(&mut self, _: &Hello<'_>, _out: &mut Vec<u8>, on: &mut impl FnMut(Event<'_>)) {
        on(Event::Ready);
    }

    fn data(
        &mut self,
        p: &[u8],
        _out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        on(Event::Message(p));
        Ok(())
    }
}
