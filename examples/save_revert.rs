//! Explicit `save()` and `revert()` (pso's names): keep what is done, undo what failed.
//!
//! `?add=spam` puts an item in the cart and saves at once, so the item is kept even if what
//! follows fails. `?add=spam&pay=1` then tries to pay; paying fails for carts over three items,
//! and `revert()` takes the session back to the saved state, so the failed attempt leaves no
//! trace (no "paid" flag, no half-updated total) while the cart itself survives.
//!
//! Run it from a terminal: `QUERY_STRING='add=spam' cargo run --example save_revert`.

use std::io::Write;

fn main() {
    pso::run(|cx: &mut pso::Context| {
        let mut cart: Vec<String> = cx.session.get("cart")?.unwrap_or_default();
        if let Some(item) = cx.request.query("add") {
            cart.push(item);
            cx.session.set("cart", &cart)?;
            cx.session.save()?;
        }

        if cx.request.query("pay").is_some() {
            cx.session.set("paid", &true)?;
            cx.session.set("total", &(cart.len() as u64 * 3))?;
            if cart.len() > 3 {
                cx.session.revert();
                write!(cx.response, "Payment refused; nothing was charged. ")?;
            }
        }

        let paid: bool = cx.session.get("paid")?.unwrap_or(false);
        write!(
            cx.response,
            "Cart: {} item(s): {}. Paid: {paid}.",
            cart.len(),
            cart.join(", ")
        )?;
        Ok(())
    })
}
