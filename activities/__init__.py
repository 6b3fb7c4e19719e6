"""Side effects of a deployment: Kubernetes writes, smoke tests, metric queries, notifications.

Every activity is idempotent (a retried call ends in the same state) and says whether retrying
can help: transient failures are raised as retryable errors for Temporal's retry policy, the rest
as `ApplicationError(non_retryable=True)` carrying the API's own message.
"""
