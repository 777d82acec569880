"""Fleet monitoring (Flower features): worker events and inspection."""
