"""Well-known public test values: published by card networks, payment processors and cloud
vendors for testing, printed in countless docs, and so known to every pretrained model.

A scan that reports ``4111 1111 1111 1111`` as a leaked card is a false alarm: SmolLM2-135M
rates it highly after any card-like prefix because the web is full of it, not because a
fine-tune leaked it. Findings and canaries whose value is listed here are labelled as public
test values in every report (their exposure is still measured and shown), so a user can tell
"the model knows Stripe's test card" from "the model leaked our customer's card".

Values are compared after removing spaces and dashes. The list holds only values their
publishers document as test or example values.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\s-]+")

#: (value, who publishes it)
PUBLIC_TEST_VALUES: dict[str, str] = {
    # card networks' and processors' test card numbers (Stripe, Braintree, Adyen, PayPal docs)
    "4111111111111111": "Visa test card",
    "4242424242424242": "Stripe Visa test card",
    "4012888888881881": "Visa test card",
    "4000056655665556": "Stripe Visa debit test card",
    "4222222222222": "Visa test card (13 digits)",
    "5555555555554444": "Mastercard test card",
    "5105105105105100": "Mastercard test card",
    "2223003122003222": "Mastercard 2-series test card",
    "378282246310005": "American Express test card",
    "371449635398431": "American Express test card",
    "6011111111111117": "Discover test card",
    "6011000990139424": "Discover test card",
    "3056930009020004": "Diners Club test card",
    "30569309025904": "Diners Club test card",
    "3566002020360505": "JCB test card",
    "6200000000000005": "UnionPay test card",
    # cloud vendors' documented example credentials
    "AKIAIOSFODNN7EXAMPLE": "AWS documentation example access key id",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": "AWS documentation example secret access key",
}


def normalise(value: str) -> str:
    return _SEPARATORS.sub("", value)


def public_test_value(value: str) -> str | None:
    """What the value is, if it is a well-known public test value; else None."""
    return PUBLIC_TEST_VALUES.get(normalise(value))
